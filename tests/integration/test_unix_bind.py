"""bind(2) of AF_UNIX sockets on paths of the container's root (syscalls/sockets.py),
in real containers: the same static C probe runs under pysandbox and under runc
and must print the same lines, but for the names getsockname/getpeername
report, which differ by design (the module's docstring) and are checked on
their own. The handler's own paths a container cannot provoke at will (the
caller interrupted before the install) are run in this process, which plays
the caller."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import cast

import pytest

from pysandbox.sentry.loop import CONTINUE, Call, NotificationGone
from pysandbox.sentry.notify import Listener
from pysandbox.syscalls.files import FileHandlers
from pysandbox.syscalls.sockets import UnixSocketHandlers
from tests.conftest import Runner
from tests.integration.helpers import (
    UNIX_SOCKET_PROBE_HEAD,
    compile_probe,
    probe_against_runc,
    probe_bundle,
    run_runc,
)

PROBE = (
    UNIX_SOCKET_PROBE_HEAD
    + r"""
#define SUN_PATH offsetof(struct sockaddr_un, sun_path)

static void stat_of(const char *path) {
    struct stat st;
    if (lstat(path, &st) == 0)
        printf("  %s sock %d mode %o uid %d gid %d\n", path, S_ISSOCK(st.st_mode),
               st.st_mode & 07777, st.st_uid, st.st_gid);
    else
        printf("  %s %s\n", path, strerrorname_np(errno));
}

/* The names the kernel reports: these lines differ under pysandbox by design
   (the gofer binds the last component), so they start with "name " and the
   test compares them on their own (as the one other such line: the bind of
   a connected socket). */
static void name_of(const char *what, int s, int peer) {
    struct sockaddr_un a;
    socklen_t len = sizeof a;
    memset(&a, 0, sizeof a);
    struct sockaddr *sa = (struct sockaddr *)&a;
    int r = peer ? getpeername(s, sa, &len) : getsockname(s, sa, &len);
    if (r < 0)
        printf("name %s %s\n", what, strerrorname_np(errno));
    else
        printf("name %s %d %s\n", what, (int)len, a.sun_path[0] ? a.sun_path : "(none)");
}

static void *in_thread(void *arg) {
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    *(long *)arg = bind_path(s, "/tmp/thread") < 0 ? -errno : 0;
    close(s);
    return NULL;
}

int main(int argc, char **argv) {
    char buf[64];
    umask(022);
    if (argc > 1 && strcmp(argv[1], "user") == 0) {
        /* as uid 1000: the gofer binds with the caller's credentials */
        int u = socket(AF_UNIX, SOCK_STREAM, 0);
        T("user-bind-etc", bind_path(u, "/etc/u.sock"));
        stat_of("/etc/u.sock");
        T("user-bind-tmp", bind_path(u, "/tmp/u.sock"));
        stat_of("/tmp/u.sock");
        T("user-listen", listen(u, 1));
        int c = socket(AF_UNIX, SOCK_STREAM, 0);
        T("user-connect", connect_path(c, "/tmp/u.sock"));
        T("user-unlink-theirs", unlink("/tmp/s"));
        return 0;
    }

    /* a stream socket in the root, listening; a child connects */
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    int opt = 1;
    struct timeval tv = {7, 0};
    T("setsockopt-passcred", setsockopt(s, SOL_SOCKET, SO_PASSCRED, &opt, sizeof opt));
    T("setsockopt-rcvtimeo", setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv));
    T("bind-stream", bind_path(s, "/tmp/s1"));
    stat_of("/tmp/s1");
    name_of("bound", s, 0);
    socklen_t olen = sizeof opt;
    opt = 0;
    T("getsockopt-passcred", getsockopt(s, SOL_SOCKET, SO_PASSCRED, &opt, &olen));
    printf("  passcred %d\n", opt);
    memset(&tv, 0, sizeof tv);
    olen = sizeof tv;
    T("getsockopt-rcvtimeo", getsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, &olen));
    printf("  rcvtimeo %ld\n", (long)tv.tv_sec);
    T("listen", listen(s, 4));
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        int c = socket(AF_UNIX, SOCK_STREAM, 0);
        T("child-connect", connect_path(c, "/tmp/s1"));
        name_of("child-peer", c, 1);
        struct ucred cred;
        socklen_t clen = sizeof cred;
        T("child-peercred", getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &clen));
        printf("  peer is the parent %d\n", cred.pid == getppid());
        T("child-write", write(c, "ping", 4));
        T("child-read", read(c, buf, 4));
        printf("  child got %.4s\n", buf);
        fflush(stdout);
        _exit(0);
    }
    int a = accept(s, NULL, NULL);
    show("accept", a < 0 ? -1 : 0, errno);
    T("parent-read", read(a, buf, 4));
    T("parent-write", write(a, "pong", 4));
    int status;
    waitpid(child, &status, 0);
    fflush(stdout);
    printf("  parent got %.4s, child status %d\n", buf, status);
    close(a);

    /* errors of the path */
    int s2 = socket(AF_UNIX, SOCK_STREAM, 0);
    T("bind-existing", bind_path(s2, "/tmp/s1"));
    T("bind-missing-dir", bind_path(s2, "/nonexistent/s"));
    T("bind-on-dir", bind_path(s2, "/tmp"));
    T("bind-dot", bind_path(s2, "/tmp/."));
    T("bind-root", bind_path(s2, "/"));
    T("bind-trailing-slash", bind_path(s2, "/tmp/ts/"));
    stat_of("/tmp/ts");
    T("bind-under-file", bind_path(s2, "/etc/passwd/s"));
    T("symlink-dangling", symlink("/tmp/nowhere", "/tmp/dangling"));
    T("bind-dangling-symlink", bind_path(s2, "/tmp/dangling"));
    stat_of("/tmp/nowhere");
    T("mkdir-real", mkdir("/tmp/real", 0755));
    T("symlink-dir", symlink("real", "/tmp/ldir"));
    T("bind-through-symlink", bind_path(s2, "/tmp/ldir/s"));
    stat_of("/tmp/real/s");
    name_of("through-symlink", s2, 0);

    /* the socket is bound already: Linux makes the file, removes it, EINVAL */
    T("rebind-elsewhere", bind_path(s, "/tmp/s1b"));
    stat_of("/tmp/s1b");
    T("rebind-existing", bind_path(s, "/tmp/real/s"));

    /* addrlen and the address itself */
    struct sockaddr_un big[2];
    memset(big, 0, sizeof big);
    big[0].sun_family = AF_UNIX;
    strcpy(big[0].sun_path, "/tmp/long");
    int s3 = socket(AF_UNIX, SOCK_STREAM, 0);
    T("bind-addrlen-too-long", bind(s3, (struct sockaddr *)big, sizeof big[0] + 1));
    T("bind-addrlen-1", bind(s3, (struct sockaddr *)big, 1));
    T("bind-addrlen-0", bind(s3, (struct sockaddr *)big, 0));
    T("bind-addrlen-negative", bind(s3, (struct sockaddr *)big, -1));
    T("bind-efault", bind(s3, (struct sockaddr *)8, sizeof big[0]));
    struct sockaddr_un inet = sun_of("/tmp/inet");
    inet.sun_family = AF_INET;
    T("bind-wrong-family", bind(s3, (struct sockaddr *)&inet, sizeof inet));
    stat_of("/tmp/inet");
    /* a sun_path with no NUL in it: 108 bytes, addrlen = sizeof */
    struct sockaddr_un full;
    full.sun_family = AF_UNIX;
    memcpy(full.sun_path, "/tmp/", 5);
    memset(full.sun_path + 5, 'x', sizeof full.sun_path - 5);
    T("bind-108", bind(s3, (struct sockaddr *)&full, sizeof full));
    char full_path[sizeof full.sun_path + 1];
    memcpy(full_path, full.sun_path, sizeof full.sun_path);
    full_path[sizeof full.sun_path] = 0;
    struct stat st;
    T("stat-108", stat(full_path, &st));
    printf("  sock %d\n", S_ISSOCK(st.st_mode));
    /* addrlen shorter than the string: the name ends there */
    int s4 = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un cut = sun_of("/tmp/cutXXXX");
    T("bind-addrlen-cuts", bind(s4, (struct sockaddr *)&cut, SUN_PATH + 8));
    stat_of("/tmp/cut");
    stat_of("/tmp/cutXXXX");

    /* datagrams */
    int d = socket(AF_UNIX, SOCK_DGRAM, 0);
    T("bind-dgram", bind_path(d, "/tmp/d1"));
    stat_of("/tmp/d1");
    int dc = socket(AF_UNIX, SOCK_DGRAM, 0);
    struct sockaddr_un to = sun_of("/tmp/d1");
    T("sendto-dgram", sendto(dc, "hello", 5, 0, (struct sockaddr *)&to, sizeof to));
    T("recv-dgram", recv(d, buf, sizeof buf, MSG_DONTWAIT));
    int sp = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    T("bind-seqpacket", bind_path(sp, "/tmp/sp"));
    T("listen-seqpacket", listen(sp, 1));
    int spc = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    T("connect-seqpacket", connect_path(spc, "/tmp/sp"));
    int type = 0;
    olen = sizeof type;
    T("so-type", getsockopt(sp, SOL_SOCKET, SO_TYPE, &type, &olen));
    printf("  seqpacket %d\n", type == SOCK_SEQPACKET);

    /* fd flags: O_NONBLOCK stays, close-on-exec stays (or stays off) */
    int nb = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    T("bind-nonblock", bind_path(nb, "/tmp/nb"));
    printf("  nonblock %d cloexec %d\n", !!(fcntl(nb, F_GETFL) & O_NONBLOCK),
           !!(fcntl(nb, F_GETFD) & FD_CLOEXEC));
    T("listen-nonblock", listen(nb, 1));
    T("accept-nonblock", accept(nb, NULL, NULL));
    int ce = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int ce_fd = ce;
    T("bind-cloexec", bind_path(ce, "/tmp/ce"));
    printf("  nonblock %d cloexec %d same fd %d\n", !!(fcntl(ce, F_GETFL) & O_NONBLOCK),
           !!(fcntl(ce, F_GETFD) & FD_CLOEXEC), ce == ce_fd);

    /* the socket's own mode (fchmod before bind) and the umask */
    int m = socket(AF_UNIX, SOCK_STREAM, 0);
    T("fchmod-socket", fchmod(m, 0710));
    T("bind-fchmod", bind_path(m, "/tmp/m1"));
    stat_of("/tmp/m1");
    umask(027);
    int m2 = socket(AF_UNIX, SOCK_STREAM, 0);
    T("bind-umask-027", bind_path(m2, "/tmp/m2"));
    stat_of("/tmp/m2");
    umask(022);

    /* abstract names and autobind stay the kernel's */
    int ab = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un abs;
    memset(&abs, 0, sizeof abs);
    abs.sun_family = AF_UNIX;
    memcpy(abs.sun_path, "\0unix-bind-probe", 16);
    T("bind-abstract", bind(ab, (struct sockaddr *)&abs, SUN_PATH + 16));
    socklen_t alen = sizeof abs;
    T("getsockname-abstract", getsockname(ab, (struct sockaddr *)&abs, &alen));
    printf("  abstract len %d %.15s\n", (int)alen, abs.sun_path + 1);
    int au = socket(AF_UNIX, SOCK_DGRAM, 0);
    T("autobind", bind(au, (struct sockaddr *)&abs, SUN_PATH));
    alen = sizeof abs;
    T("getsockname-autobind", getsockname(au, (struct sockaddr *)&abs, &alen));
    printf("  autobind len %d abstract %d\n", (int)alen, abs.sun_path[0] == 0);

    /* not a socket, no such fd, a socket of another family */
    int nul = open("/dev/null", O_RDONLY);
    T("bind-not-socket", bind_path(nul, "/tmp/ns"));
    T("bind-bad-fd", bind_path(999, "/tmp/bad"));
    T("bind-negative-fd", bind_path(-1, "/tmp/bad"));
    int in = socket(AF_INET, SOCK_STREAM, 0);
    T("bind-inet-socket-unix-addr", bind_path(in, "/tmp/inet2"));
    stat_of("/tmp/inet2");
    stat_of("/tmp/ns");

    /* a connected socket (a socketpair's) is the kernel's: EROFS in the root
       under pysandbox (by design, see syscalls/sockets.py), bound under runc */
    int pair[2];
    T("socketpair", socketpair(AF_UNIX, SOCK_STREAM, 0, pair));
    errno = 0;
    int pr = bind_path(pair[0], "/tmp/pair");
    printf("name socketpair-bind %d %s\n", pr, pr < 0 ? strerrorname_np(errno) : "-");

    /* relative paths follow the working directory */
    T("chdir", chdir("/tmp"));
    int r = socket(AF_UNIX, SOCK_STREAM, 0);
    T("bind-relative", bind_path(r, "rel"));
    stat_of("/tmp/rel");
    name_of("relative", r, 0);
    int r2 = socket(AF_UNIX, SOCK_STREAM, 0);
    T("bind-relative-subdir", bind_path(r2, "real/rel2"));
    stat_of("/tmp/real/rel2");
    name_of("relative-subdir", r2, 0);

    /* a kernel mount (tmpfs): the kernel's bind */
    int k = socket(AF_UNIX, SOCK_STREAM, 0);
    T("bind-dev-shm", bind_path(k, "/dev/shm/k"));
    stat_of("/dev/shm/k");
    name_of("dev-shm", k, 0);

    /* from a second thread */
    pthread_t th;
    long thread_result = 1;
    pthread_create(&th, NULL, in_thread, &thread_result);
    pthread_join(th, NULL);
    printf("bind-in-thread %ld\n", thread_result);
    stat_of("/tmp/thread");

    /* unlink and bind again */
    T("unlink", unlink("/tmp/s1"));
    int s5 = socket(AF_UNIX, SOCK_STREAM, 0);
    T("bind-after-unlink", bind_path(s5, "/tmp/s1"));

    return 0;
}
"""
)


# The probe's paths are in the root file system: no mount there.
FREE = ("/tmp", "/run")


@pytest.fixture(scope="module")
def bind_probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_probe(tmp_path_factory.mktemp("probe"), PROBE, "unix-bind")


def test_bind_answers_as_the_kernel_does(
    runtime: Runner, busybox_rootfs: Path, tmp_path: Path, bind_probe: Path, cid: str
) -> None:
    run = probe_against_runc(runtime, tmp_path, busybox_rootfs, bind_probe, cid, free=FREE)
    lines, names, ref_names, log = run.lines, run.names, run.ref_names, run.log
    ours, theirs = run.ours, run.theirs
    assert "bind-stream 0 -" in lines and "  /tmp/s1 sock 1 mode 755 uid 0 gid 0" in lines
    # The socket files were made in the overlay, not in the bundle (runc's were).
    assert not (ours.rootfs / "tmp" / "s1").exists()
    assert (theirs.rootfs / "tmp" / "s1").is_socket()

    # The names the sockets report. Linux keeps sun_path as it was passed;
    # the gofer binds the last component from inside the parent directory.
    # getsockname is the sentry's and gives the address bound; a peer's
    # getpeername sees the gofer's name (syscalls/sockets.py's docstring).
    assert ref_names == [
        "name bound 10 /tmp/s1",
        "name child-peer 10 /tmp/s1",
        "name through-symlink 14 /tmp/ldir/s",
        "name socketpair-bind 0 -",
        "name relative 6 rel",
        "name relative-subdir 12 real/rel2",
        "name dev-shm 13 /dev/shm/k",
    ]
    assert names == [
        "name bound 10 /tmp/s1",  # getsockname: the address bound, as on Linux
        "name child-peer 5 s1",  # a peer sees the gofer's name: the last component
        "name through-symlink 14 /tmp/ldir/s",
        "name socketpair-bind -1 EROFS",  # a connected socket is left to the kernel
        "name relative 6 rel",
        "name relative-subdir 12 real/rel2",
        "name dev-shm 13 /dev/shm/k",  # the kernel's own bind (a tmpfs)
    ]
    # and the sentry served them (the gofer made the files), or let the kernel
    assert "bind(3, {AF_UNIX, '/tmp/s1'}, 110) = 0" in log, log
    assert "bind(3, {AF_UNIX, '/tmp/s1b'}, 110) = -1 EINVAL" in log, log
    assert "{AF_UNIX, '/dev/shm/k'}, 110) = (continued in the kernel)" in log, log


def test_bind_as_a_user_is_judged_as_that_user(
    runtime: Runner, busybox_rootfs: Path, tmp_path: Path, bind_probe: Path, cid: str
) -> None:
    outputs = []
    for name in ("ours", "theirs"):
        bundle = probe_bundle(tmp_path, busybox_rootfs, name, bind_probe, "user", free=FREE)
        bundle.config["process"]["user"] = {"uid": 1000, "gid": 1000}
        bundle.write()
        # a socket file of root's in /tmp (sticky): the user may not remove it
        subprocess.run(
            [sys.executable, "-c", "import socket; socket.socket(socket.AF_UNIX).bind('s')"],
            cwd=bundle.rootfs / "tmp",
            check=True,
        )
        if name == "ours":
            res = runtime("run", "--bundle", str(bundle.path), cid)
        else:
            res = run_runc(tmp_path, bundle, cid + "-runc")
        assert res.returncode == 0, res.stdout + res.stderr
        outputs.append(res.stdout)
    assert outputs[0] == outputs[1]
    assert outputs[0].splitlines() == [
        "user-bind-etc -1 EACCES",
        "  /etc/u.sock ENOENT",
        "user-bind-tmp 0 -",
        "  /tmp/u.sock sock 1 mode 755 uid 1000 gid 1000",
        "user-listen 0 -",
        "user-connect 0 -",
        "user-unlink-theirs -1 EPERM",
    ]


# --- the handler alone, in this process (no container): the caller is us ---------


class _FakeListener:
    """What the handler asks of a Listener: NOTIF_ID_VALID and ADDFD (recorded,
    or failing as the kernel does when the caller was interrupted)."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.installed: list[tuple[bool, int, bool, int]] = []

    def id_valid(self, id: int) -> bool:
        return True

    def addfd(self, id: int, srcfd: int, cloexec: bool = False, newfd: int | None = None) -> int:
        if self.fail:
            raise OSError(self.fail, os.strerror(self.fail))
        with socket.socket(fileno=os.dup(srcfd)) as s:
            passcred = s.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED)
        self.installed.append((cloexec, newfd or 0, os.get_blocking(srcfd), passcred))
        return newfd or 0


class _FakeGofer:
    """bind and unlink, on the host, in a scratch directory."""

    def __init__(self) -> None:
        self.unlinked: list[bytes] = []

    def bind(self, path: bytes, kind: int, umask: int, *, cred: object) -> int:
        s = socket.socket(socket.AF_UNIX, kind)
        s.bind(path)
        return s.detach()

    def unlink(self, path: bytes, *, cred: object) -> None:
        self.unlinked.append(path)
        os.unlink(path)


class _FakeFiles:
    """FileHandlers' helpers: paths are taken relative to ``base``."""

    def __init__(self, base: Path) -> None:
        self.base = os.fsencode(base)
        self.gofer_client = _FakeGofer()

    def absolute(self, call: Call, dirfd: int, path: bytes) -> bytes:
        return self.base + b"/" + path

    def caller_fd(self, call: Call, fd: int) -> int:
        return FileHandlers.caller_fd(cast(FileHandlers, self), call, fd)

    def caller_and_umask(self, call: Call) -> tuple[object, int]:
        call.verify()
        return object(), 0o022


def _bind_call(
    tmp_path: Path, fd: int, name: bytes, fail: int = 0
) -> tuple[UnixSocketHandlers, Call, _FakeListener, _FakeFiles, object]:
    raw = struct.pack("<H", socket.AF_UNIX) + name + b"\0"
    buf = ctypes.create_string_buffer(raw, 110)
    lst = _FakeListener(fail)
    files = _FakeFiles(tmp_path)
    handlers = UnixSocketHandlers(cast(FileHandlers, files))
    args = (fd, ctypes.addressof(buf), 110, 0, 0, 0)
    call = Call(1, threading.get_native_id(), 49, 0, 0, args, cast(Listener, lst), False)
    return handlers, call, lst, files, buf  # buf: kept alive by the caller


def test_the_bound_socket_takes_the_callers_place(tmp_path: Path) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    handlers, call, lst, files, _buf = _bind_call(tmp_path, s.fileno(), b"a")
    assert handlers.bind(call) == 0
    # installed at the caller's fd, close-on-exec as it was (Python's are),
    # nonblocking and with SO_PASSCRED as the original
    assert lst.installed == [(True, s.fileno(), False, 1)]
    assert (tmp_path / "a").is_socket() and not files.gofer_client.unlinked
    s.close()


def test_an_interrupted_bind_leaves_no_file(tmp_path: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    for failure in (errno.ESRCH, errno.ENOENT):  # interrupted by a signal; gone
        handlers, call, _lst, files, _buf = _bind_call(tmp_path, s.fileno(), b"b", failure)
        with pytest.raises(NotificationGone):
            handlers.bind(call)
        assert not (tmp_path / "b").exists()
        assert files.gofer_client.unlinked == [os.fsencode(tmp_path / "b")]
    assert s.getsockname() == ""  # the caller's socket is untouched
    s.close()


def test_what_is_no_path_in_the_root_stays_the_kernels(tmp_path: Path) -> None:
    a, b = socket.socketpair()
    handlers, call, lst, _files, _buf = _bind_call(tmp_path, a.fileno(), b"c")
    assert handlers.bind(call) is CONTINUE  # connected
    handlers, call, lst, _files, _buf = _bind_call(tmp_path, a.fileno(), b"\0abstract")
    assert handlers.bind(call) is CONTINUE
    with open(os.devnull, "rb") as f:
        handlers, call, lst, _files, _buf = _bind_call(tmp_path, f.fileno(), b"d")
        assert handlers.bind(call) is CONTINUE  # ENOTSOCK is the kernel's
    handlers, call, lst, _files, _buf = _bind_call(tmp_path, 9999, b"e")
    with pytest.raises(OSError) as e:
        handlers.bind(call)
    assert e.value.errno == errno.EBADF
    assert not lst.installed and os.listdir(tmp_path) == []
    a.close()
    b.close()
