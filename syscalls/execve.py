"""execve and execveat: checked by the sentry, then run by the kernel.

The sentry resolves the program's path itself (syscalls/lookup.py: search
permission, symlinks, ELOOP, ENOTDIR, as the caller), reads its first bytes
through the gofer, and asks syscalls/execcheck.py what Linux would answer:
execute permission, ``#!`` as binfmt_script parses it, the ELF header
(class, machine, type, program headers) and PT_INTERP, whose interpreter is
resolved and checked the same way (a script's interpreter may be a script).
A refusal is answered with Linux's errno (ENOENT, EACCES, ENOEXEC, ELIBBAD,
ELOOP, EIO), and the sandbox refuses what it cannot run although Linux
would (i386 and x32 ELF, whose syscall ABIs the filter kills; formats of
the host's binfmt_misc, whose handler would run a host program for the
workload): ENOEXEC, as gVisor answers. Anything else goes on to the kernel
(SECCOMP_USER_NOTIF_FLAG_CONTINUE), which loads the program from its
read-only view of the root; ETXTBSY, the mapping of segments and everything
after the point of no return are its own.

This is DESIGN.md's documented exception to rule 1: the kernel reads the
path again. A thread racing the call can make the path name another file
by then (through the gofer: the kernel's view is read-only), so the checks
give Linux's errnos, not a guarantee: what the kernel then runs is still
a file of the container's root, under the arch-checking filter, with the
caller's own credentials (and no_new_privs). The binfmt_misc refusal is
best-effort for the same reason.

What is left to the kernel without a check (CONTINUE): a program in a mount
the kernel serves (a tmpfs, /dev), an fd (execveat AT_EMPTY_PATH), a
caller that chroot()ed,
a file or directory with a POSIX ACL, an interpreter in such places, and
anything the gofer cannot read. Every execve also makes the sentry forget
the credentials it cached (syscalls/creds.py).

Cost: a lookup, one gofer open and read for the program and one for its
interpreter: ~150-300 us. The first 4 KiB of a file are kept by (device,
inode, ctime, size), which a write changes, so a build that runs the same
compilers again pays only the lookups.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

from pysandbox.gofer.client import KernelPath
from pysandbox.gofer.protocol import Credentials
from pysandbox.oci import kernel as k
from pysandbox.sentry.loop import CONTINUE, Call, Errno, Handler, Result

from .args import s32
from .creds import CHANGE_ANY, Creds
from .execcheck import (
    HEAD_SIZE,
    ExecCred,
    ExecFacts,
    ReadMore,
    Refused,
    check_access,
    check_exec_chain,
)
from .files import FileHandlers, fd_cloexec
from .lookup import NotJudged, Who, acl_at

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = ["ExecHandlers"]

_Closer = Callable[[], None]

_HEADS_MAX: Final = 256  # files whose first bytes are kept
# The gofer reads a program with its own rights: exec needs no read permission.
_READER: Final = Credentials(0, 0, (), (1 << k.CAP_DAC_OVERRIDE) | (1 << k.CAP_DAC_READ_SEARCH))


class _LeaveItToTheKernel(Exception):
    """Something on the way the sentry does not judge: CONTINUE."""


class ExecHandlers:
    """execve/execveat through ``files``' lookups and gofer."""

    def __init__(self, files: FileHandlers) -> None:
        self.files = files
        self._heads: dict[tuple[int, int, int, int], bytes] = {}

    def routes(self) -> dict[int, Handler]:
        return {
            CHANGE_ANY["execve"]: lambda c: self._exec(c, k.AT_FDCWD, c.args[0], 0),
            CHANGE_ANY["execveat"]: lambda c: self._exec(c, c.args[0], c.args[1], c.args[4]),
        }

    def _exec(self, call: Call, dirfd: int, addr: int, flags: int) -> Result:
        files = self.files
        try:
            if files.gofer is None or files.lookup is None:
                return CONTINUE  # no gofer: nothing is read, nothing decided
            flags = s32(flags)
            if flags & ~(k.AT_SYMLINK_NOFOLLOW | k.AT_EMPTY_PATH):
                return CONTINUE  # EINVAL: the kernel's to say
            try:
                verdict = self._verdict(call, dirfd, addr, flags)
            except (KernelPath, NotJudged, _LeaveItToTheKernel):
                return CONTINUE
            if call.tracing and verdict is not None:
                call.detail = f"{call.detail}: {verdict.reason}"
            return CONTINUE if verdict is None else Errno(verdict.errno)
        finally:
            # Any task may come out of an execve with other credentials (and
            # de_thread gives the caller its leader's tid): forget them all.
            files.creds.forget_all()

    def _verdict(self, call: Call, dirfd: int, addr: int, flags: int) -> Refused | None:
        """The refusal Linux (or the sandbox) would give, or None: run it."""
        files = self.files
        lookup = files.lookup
        assert lookup is not None
        path = call.read_cstring(addr, 4096)
        if call.tracing:
            call.detail = repr(path)[1:]
        if not path:
            if flags & k.AT_EMPTY_PATH:
                raise _LeaveItToTheKernel  # execveat(fd, "", AT_EMPTY_PATH): the fd's file
            return Refused(errno.ENOENT, "empty path")
        where = files.absolute(call, dirfd, path)
        if files.jail:
            raise _LeaveItToTheKernel  # a chroot()ed caller: its root is not the lookup's
        # The caller's credentials before the exec are the ones the kernel
        # judges it with; whatever the program changes, _exec forgets after.
        creds = files.creds.get(call.pid)
        call.verify()
        cred = ExecCred(creds.fsuid, creds.fsgid, creds.groups, creds.cap_effective)
        who = files.who(creds)
        inaccessible = dirfd != k.AT_FDCWD and path[0] != 0x2F and _cloexec(call.pid, s32(dirfd))
        try:
            found = self._facts(where, not flags & k.AT_SYMLINK_NOFOLLOW, who, creds, cred)
        except OSError as e:
            return Refused(e.errno or errno.EIO, "resolving the program")
        if isinstance(found, Refused):
            return found
        facts, read_more, close = found

        def resolve(interp: bytes) -> tuple[ExecFacts, ReadMore | None] | int:
            try:
                target = files.absolute(call, k.AT_FDCWD, interp)
                got = self._facts(target, True, who, creds, cred)
            except OSError as e:
                return e.errno or errno.EIO
            if isinstance(got, Refused):
                return got.errno
            closers.append(got[2])
            return got[0], got[1]

        closers = [close]
        try:
            steps = check_exec_chain(
                facts, cred, resolve, read_more, path_inaccessible=inaccessible
            )
        finally:
            for fn in closers:
                fn()
        last = steps[-1]
        return last if isinstance(last, Refused) else None

    def _facts(
        self, path: bytes, follow: bool, who: Who, creds: Creds, cred: ExecCred
    ) -> tuple[ExecFacts, ReadMore | None, _Closer] | Refused:
        """What execcheck needs of the file ``path`` names, as the caller
        finds it: its lstat (of the symlink when not followed), its first
        bytes (when it may be executed at all) and a reader of the rest."""
        lookup = self.files.lookup
        assert lookup is not None
        dirfd, name, st = lookup.locate(path, follow, who)
        if not self.files.inode_mapped(st.st_uid, st.st_gid):
            cred = cred._replace(caps=0)  # capabilities count only for mapped inodes
        facts = ExecFacts(st.st_mode, st.st_uid, st.st_gid, st.st_size, b"", False)
        err = check_access(facts, cred)
        if err:
            if err == errno.EACCES and stat.S_ISREG(st.st_mode) and acl_at(dirfd, name):
                raise _LeaveItToTheKernel  # the ACL may grant what the mode does not
            return Refused(err, "opening for exec")
        key = (st.st_dev, st.st_ino, st.st_ctime_ns, st.st_size)
        head = self._heads.get(key)
        if head is not None:
            return facts._replace(head=head), None, _nothing
        try:
            fd = self.files.gofer_open(path, os.O_RDONLY | os.O_CLOEXEC, _READER)
        except OSError:
            raise _LeaveItToTheKernel from None  # unreadable to the gofer: the kernel decides
        try:
            head = os.pread(fd, HEAD_SIZE, 0)
        except OSError:
            os.close(fd)
            raise _LeaveItToTheKernel from None
        if len(head) == HEAD_SIZE or len(head) == st.st_size:
            if len(self._heads) >= _HEADS_MAX:
                self._heads.clear()
            self._heads[key] = head

        def read_more(offset: int, size: int) -> bytes:
            return os.pread(fd, size, offset)

        return facts._replace(head=head), read_more, lambda: os.close(fd)


def _nothing() -> None:
    pass


def _cloexec(pid: int, fd: int) -> bool:
    """Whether the caller's ``fd`` is close-on-exec (execveat's script rule);
    an fd it no longer has is not (the kernel then answers EBADF itself)."""
    try:
        return fd_cloexec(pid, fd)
    except OSError:
        return False
