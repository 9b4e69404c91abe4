"""The container's file system view: mounts, devices, pivot_root, masked and
read-only paths. Runs in the container's init, inside its new mount namespace.

Mount targets are resolved inside the rootfs with openat2(RESOLVE_IN_ROOT)
and mounted through /proc/self/fd, so a symlink planted in the image cannot
send a mount outside the rootfs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable, Sequence

from pysandbox.oci import kernel as k
from pysandbox.oci.log import RuntimeFailure
from pysandbox.oci.overlay import Overlay, mount_overlay
from pysandbox.oci.records import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pysandbox.oci.config import Device, Mount, Spec

# option -> (set these flags, clear these flags)
_FLAG_OPTIONS: dict[str, tuple[int, int]] = {
    "defaults": (0, 0),
    "ro": (k.MS_RDONLY, 0),
    "rw": (0, k.MS_RDONLY),
    "nosuid": (k.MS_NOSUID, 0),
    "suid": (0, k.MS_NOSUID),
    "nodev": (k.MS_NODEV, 0),
    "dev": (0, k.MS_NODEV),
    "noexec": (k.MS_NOEXEC, 0),
    "exec": (0, k.MS_NOEXEC),
    "sync": (k.MS_SYNCHRONOUS, 0),
    "async": (0, k.MS_SYNCHRONOUS),
    "dirsync": (k.MS_DIRSYNC, 0),
    "remount": (k.MS_REMOUNT, 0),
    "mand": (k.MS_MANDLOCK, 0),
    "nomand": (0, k.MS_MANDLOCK),
    "atime": (0, k.MS_NOATIME),
    "noatime": (k.MS_NOATIME, 0),
    "diratime": (0, k.MS_NODIRATIME),
    "nodiratime": (k.MS_NODIRATIME, 0),
    "relatime": (k.MS_RELATIME, 0),
    "norelatime": (0, k.MS_RELATIME),
    "strictatime": (k.MS_STRICTATIME, 0),
    "nostrictatime": (0, k.MS_STRICTATIME),
    "lazytime": (k.MS_LAZYTIME, 0),
    "nolazytime": (0, k.MS_LAZYTIME),
    "nosymfollow": (k.MS_NOSYMFOLLOW, 0),
    "symfollow": (0, k.MS_NOSYMFOLLOW),
    "bind": (k.MS_BIND, 0),
    "rbind": (k.MS_BIND | k.MS_REC, 0),
}

PROPAGATION: dict[str, int] = {
    "private": k.MS_PRIVATE,
    "rprivate": k.MS_PRIVATE | k.MS_REC,
    "shared": k.MS_SHARED,
    "rshared": k.MS_SHARED | k.MS_REC,
    "slave": k.MS_SLAVE,
    "rslave": k.MS_SLAVE | k.MS_REC,
    "unbindable": k.MS_UNBINDABLE,
    "runbindable": k.MS_UNBINDABLE | k.MS_REC,
}

# Options that only make sense to the caller's tooling; the kernel never sees them.
_IGNORED_OPTIONS = frozenset({"tmpcopyup", "z", "Z", "U", "idmap", "ridmap", "copy-symlink"})

# Flags a bind remount must repeat or the kernel refuses it (locked in a user namespace).
_STATVFS_TO_MS = (
    (os.ST_RDONLY, k.MS_RDONLY),
    (os.ST_NOSUID, k.MS_NOSUID),
    (os.ST_NODEV, k.MS_NODEV),
    (os.ST_NOEXEC, k.MS_NOEXEC),
    (os.ST_NOATIME, k.MS_NOATIME),
    (os.ST_NODIRATIME, k.MS_NODIRATIME),
    (os.ST_RELATIME, k.MS_RELATIME),
)


@record
class ParsedOptions:
    flags: int
    propagation: list[int]
    data: str


def parse_mount_options(options: Iterable[str]) -> ParsedOptions:
    flags = 0
    propagation: list[int] = []
    data: list[str] = []
    for opt in options:
        if opt in _FLAG_OPTIONS:
            add, clear = _FLAG_OPTIONS[opt]
            flags = (flags | add) & ~clear
        elif opt in PROPAGATION:
            propagation.append(PROPAGATION[opt])
        elif opt in _IGNORED_OPTIONS:
            continue
        else:
            data.append(opt)
    return ParsedOptions(flags, propagation, ",".join(data))


def _locked_flags(path: str) -> int:
    st = os.statvfs(path)
    return sum(ms for st_flag, ms in _STATVFS_TO_MS if st.f_flag & st_flag)


def remount_bind(path: str, flags: int) -> None:
    """Apply per-mount flags to a bind mount, keeping the flags the kernel locks."""
    keep = _locked_flags(path) & ~k.MS_RDONLY & ~(k.MS_RELATIME | k.MS_NOATIME)
    want = (flags & ~(k.MS_BIND | k.MS_REC | k.MS_REMOUNT)) | keep
    k.mount(None, path, None, k.MS_BIND | k.MS_REMOUNT | want)


class RootfsBuilder:
    """Prepares ``spec.root.path`` as the container's root, then pivots into it."""

    def __init__(
        self,
        spec: Spec,
        *,
        cgroup_dirs: dict[str, str],
        cgroup_mode: str,
        in_userns: bool,
        new_cgroupns: bool,
        overlay: Overlay | None = None,
        overlay_size: int = 0,
        overlay_dir: str = "",
    ) -> None:
        self.spec = spec
        # --overlay (oci/overlay.py): None or medium "none" writes the rootfs itself.
        self.overlay = overlay
        self.overlay_size = overlay_size
        self.overlay_dir = overlay_dir
        # The real path: mount targets are checked against it after resolution,
        # and a bundle's rootfs may well be a symlink (shared image layers).
        self.rootfs = os.path.realpath(spec.root.path)
        self.cgroup_dirs = cgroup_dirs  # v1: hierarchy mountpoint -> container's dir; v2: {"": dir}
        self.cgroup_mode = cgroup_mode
        self.in_userns = in_userns
        self.new_cgroupns = new_cgroupns
        self.dev_is_bind = any(_norm(m.destination) == "/dev" and _is_bind(m) for m in spec.mounts)

    # --- before pivot --------------------------------------------------------
    def prepare(self) -> None:
        linux = self.spec.linux
        prop = PROPAGATION.get(linux.rootfs_propagation or "", k.MS_SLAVE | k.MS_REC)
        # Our copy of the host's mounts must not propagate back to the host
        # unless the spec asks for it (rootfsPropagation, rslave by default).
        k.mount(None, "/", None, prop)
        self._make_parent_private()
        k.mount(self.rootfs, self.rootfs, "bind", k.MS_BIND | k.MS_REC)
        if (
            self.overlay is not None
            and self.overlay.medium != "none"
            and not self.spec.root.readonly  # nothing to protect: it is read-only
        ):
            mount_overlay(self.rootfs, self.overlay, self.overlay_size, self.overlay_dir)
        # The cgroup mount (and anything mounted beneath it) waits until init
        # has joined its cgroup and made its cgroup namespace: see spawn.launch.
        self._deferred: list[Mount] = []
        cgroup_dest: str | None = None
        for m in self.spec.mounts:
            dest = _norm(m.destination)
            if m.type in ("cgroup", "cgroup2") or (
                cgroup_dest is not None and (dest + "/").startswith(cgroup_dest + "/")
            ):
                cgroup_dest = cgroup_dest or dest
                self._deferred.append(m)
                continue
            self._mount(m)
        if not self.dev_is_bind:
            self._create_devices()
            self._dev_symlinks()
        cwd = self.spec.process.cwd if self.spec.process is not None else "/"
        # Like runc, a missing working directory is created (before the root
        # turns read-only); it is resolved inside the rootfs like a mount point.
        self._make_in_root(_norm(cwd).lstrip("/"), is_dir=True)

    def mount_deferred(self) -> None:
        for m in getattr(self, "_deferred", []):
            self._mount(m)

    def _make_parent_private(self) -> None:
        """pivot_root refuses a new root whose parent mount is shared."""
        path = self.rootfs
        while True:
            try:
                k.mount(None, path, None, k.MS_PRIVATE)
                return
            except OSError as e:
                if e.errno != errno.EINVAL or path == "/":
                    raise
                path = os.path.dirname(path)

    def _target(self, dest: str, *, is_dir: bool) -> str:
        """Create the mount point inside the rootfs and return a path to it
        that cannot be redirected by symlinks in the image."""
        rel = _norm(dest).lstrip("/")
        self._make_in_root(rel, is_dir=is_dir)
        rootfd = os.open(self.rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd = k.openat2(
                rootfd,
                rel or ".",
                os.O_PATH | os.O_CLOEXEC,
                0,
                k.RESOLVE_IN_ROOT | k.RESOLVE_NO_MAGICLINKS,
            )
        finally:
            os.close(rootfd)
        real = os.readlink(f"/proc/self/fd/{fd}")
        os.close(fd)
        if real != self.rootfs and not real.startswith(self.rootfs.rstrip("/") + "/"):
            raise OSError(errno.EXDEV, f"mount destination {dest} escapes the rootfs")
        return real

    def _make_in_root(self, rel: str, *, is_dir: bool) -> None:
        """mkdir -p ``rel`` (and the final file when not ``is_dir``) with the
        rootfs as ``/``: symlinks met on the way, dangling ones included, are
        followed as if chrooted, so ``evil -> /etc`` creates ``rootfs/etc``
        and never anything on the host. Nothing is created through a
        symlink: every mkdir/open names a checked, non-symlink parent."""
        root = self.rootfs.rstrip("/") or "/"
        todo = [p for p in rel.split("/") if p]
        done: list[str] = []
        links = 0
        while todo:
            comp = todo.pop(0)
            if comp == ".":
                continue
            if comp == "..":
                if done:
                    done.pop()
                continue
            path = os.path.join(root, *done, comp)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                try:
                    if todo or is_dir:
                        os.mkdir(path, 0o755)
                    else:
                        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW
                        os.close(os.open(path, flags | os.O_CLOEXEC, 0o644))
                except FileExistsError:
                    todo.insert(0, comp)  # raced with another creator: look again
                    continue
                done.append(comp)
                continue
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > 40:
                    raise OSError(errno.ELOOP, f"too many symlinks under {root}: {rel}")
                target = os.readlink(path)
                if target.startswith("/"):
                    done = []
                todo = [p for p in target.split("/") if p] + todo
                continue
            done.append(comp)

    def _mount(self, m: Mount) -> None:
        opts = parse_mount_options(m.options)
        mtype = m.type or ("bind" if opts.flags & k.MS_BIND else "none")
        if mtype == "cgroup" or mtype == "cgroup2":
            self._mount_cgroup(m, opts)
            return
        if opts.flags & k.MS_BIND or mtype == "bind":
            source = m.source or ""
            if not os.path.isabs(source):
                source = os.path.join(self.spec.bundle, source)
            if not os.path.lexists(source):
                # Say which source is missing: the kernel's ENOENT would name
                # the destination we were mounting onto.
                raise RuntimeFailure(
                    f"mount {m.destination}: source {source}: no such file or directory"
                )
            src_is_dir = os.path.isdir(source)
            target = self._target(m.destination, is_dir=src_is_dir)
            k.mount(source, target, None, k.MS_BIND | (opts.flags & k.MS_REC))
            if opts.flags & ~(k.MS_BIND | k.MS_REC):
                remount_bind(target, opts.flags)
        else:
            target = self._target(m.destination, is_dir=True)
            flags = opts.flags
            try:
                k.mount(m.source or mtype, target, mtype, flags, opts.data or None)
            except PermissionError:
                if mtype != "sysfs":
                    raise
                # sysfs needs a network namespace of our own; runc binds the host's then.
                k.mount("/sys", target, None, k.MS_BIND | k.MS_REC)
                remount_bind(target, flags | k.MS_RDONLY)
        for prop in opts.propagation:
            k.mount(None, target, None, prop)

    def _mount_cgroup(self, m: Mount, opts: ParsedOptions) -> None:
        target = self._target(m.destination, is_dir=True)
        ro = opts.flags & k.MS_RDONLY
        base = opts.flags & (k.MS_NOSUID | k.MS_NODEV | k.MS_NOEXEC)
        if self.cgroup_mode == "v2":
            if self.new_cgroupns:
                k.mount("cgroup2", target, "cgroup2", base | ro)
            else:
                k.mount(self.cgroup_dirs[""], target, None, k.MS_BIND | k.MS_REC)
                remount_bind(target, base | ro | k.MS_BIND)
            return
        k.mount("tmpfs", target, "tmpfs", base, "mode=755")
        for hierarchy, cgdir in sorted(self.cgroup_dirs.items()):
            name = os.path.basename(hierarchy)
            sub = os.path.join(target, name)
            os.makedirs(sub, exist_ok=True)
            k.mount(cgdir, sub, None, k.MS_BIND | k.MS_REC)
            remount_bind(sub, base | ro | k.MS_BIND)
            # cpu,cpuacct style co-mounts get their usual symlinks
            if "," in name:
                for part in name.split(","):
                    link = os.path.join(target, part)
                    if not os.path.lexists(link):
                        os.symlink(name, link)
        if ro:
            remount_bind(target, base | k.MS_RDONLY | k.MS_BIND)

    def _create_devices(self) -> None:
        for dev in default_devices(self.spec.linux.devices):
            path = _norm(dev.path)
            # The parent is resolved inside the rootfs: an image whose /dev is
            # a symlink to the host's /dev must not get host nodes replaced.
            parent = self._target(os.path.dirname(path), is_dir=True)
            target = os.path.join(parent, os.path.basename(path))
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(target)
                if stat.S_ISDIR(st.st_mode):
                    raise OSError(errno.EISDIR, f"device {dev.path}: a directory is in the way")
                os.unlink(target)
            mode = (dev.file_mode if dev.file_mode is not None else 0o666) & 0o7777
            if self.in_userns:
                # mknod is not allowed in a user namespace: bind the host's node.
                flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                os.close(os.open(target, flags, 0o644))
                k.mount(dev.path, target, None, k.MS_BIND)
                continue
            kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[
                dev.type
            ]
            old = os.umask(0)
            try:
                os.mknod(target, kind | mode, os.makedev(dev.major, dev.minor))
            finally:
                os.umask(old)
            os.chown(target, dev.uid or 0, dev.gid or 0, follow_symlinks=False)

    def _dev_symlinks(self) -> None:
        dev = self._target("/dev", is_dir=True)
        links = [
            ("/proc/self/fd", "fd"),
            ("/proc/self/fd/0", "stdin"),
            ("/proc/self/fd/1", "stdout"),
            ("/proc/self/fd/2", "stderr"),
        ]
        if os.path.exists("/proc/kcore"):
            links.append(("/proc/kcore", "core"))
        if not os.path.lexists(os.path.join(dev, "ptmx")):
            links.append(("pts/ptmx", "ptmx"))
        for src, name in links:
            with contextlib.suppress(FileExistsError):
                os.symlink(src, os.path.join(dev, name))

    def bind_console(self, slave_path: str) -> None:
        """Bind the pty slave to /dev/console (called after pivot)."""
        console = "/dev/console"
        if not os.path.exists(console):
            with open(console, "w"):
                pass
        k.mount(slave_path, console, None, k.MS_BIND)

    # --- the switch ------------------------------------------------------------
    def pivot(self, *, no_pivot: bool) -> None:
        if no_pivot:
            os.chdir(self.rootfs)
            k.mount(self.rootfs, "/", None, k.MS_MOVE)
            os.chroot(".")
            os.chdir("/")
            return
        oldroot = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
        newroot = os.open(self.rootfs, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fchdir(newroot)
            # pivot_root(".", ".") stacks the old root on top of the new one;
            # unmounting "." afterwards removes it without needing a put_old dir.
            k.pivot_root(".", ".")
            os.fchdir(oldroot)
            k.mount(None, ".", None, k.MS_SLAVE | k.MS_REC)
            k.umount2(".", k.MNT_DETACH)
        finally:
            os.close(oldroot)
            os.close(newroot)
        os.chdir("/")

    # --- after pivot -------------------------------------------------------------
    def finish(self) -> None:
        linux = self.spec.linux
        for path in linux.readonly_paths:
            make_readonly(path)
        for path in linux.masked_paths:
            mask_path(path)
        if self.spec.root.readonly:
            remount_bind("/", k.MS_RDONLY | k.MS_BIND)
        if linux.rootfs_propagation in ("shared", "rshared", "unbindable", "runbindable"):
            k.mount(None, "/", None, PROPAGATION[linux.rootfs_propagation])


def make_readonly(path: str) -> None:
    try:
        k.mount(path, path, None, k.MS_BIND | k.MS_REC)
    except FileNotFoundError:
        return
    remount_bind(path, k.MS_RDONLY | k.MS_BIND)


def mask_path(path: str) -> None:
    try:
        if os.path.isdir(path):
            k.mount("tmpfs", path, "tmpfs", k.MS_RDONLY, None)
        else:
            k.mount("/dev/null", path, None, k.MS_BIND)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        return


def _norm(path: str) -> str:
    # normpath keeps exactly two leading slashes (POSIX leaves "//" to the
    # system), so "/" + "/dev" would stay "//dev"
    return os.path.normpath("/" + path.lstrip("/"))


def _is_bind(m: Mount) -> bool:
    return m.type == "bind" or any(o in ("bind", "rbind") for o in m.options)


@record
class _DefaultDevice:
    path: str
    type: str
    major: int
    minor: int
    file_mode: int | None
    uid: int | None
    gid: int | None


_DEFAULTS: tuple[tuple[str, int, int], ...] = (
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
)


def default_devices(extra: Sequence[Device]) -> list[Device | _DefaultDevice]:
    """The devices every container gets (as runc creates them) plus linux.devices;
    an entry in linux.devices replaces a default of the same path."""
    given = {_norm(d.path) for d in extra}
    out: list[Device | _DefaultDevice] = [
        _DefaultDevice(path, "c", major, minor, 0o666, 0, 0)
        for path, major, minor in _DEFAULTS
        if path not in given
    ]
    out.extend(extra)
    return out
