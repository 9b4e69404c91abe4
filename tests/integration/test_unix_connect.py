"""connect(2) of AF_UNIX sockets to socket files of the container's root
(syscalls/sockets.py, gofer/server.py ``op_connectfd``), in real containers:
the same static C probe runs under pysandbox and under runc and must print
the same lines, but for those starting with "name " (the names a socket
bound through the gofer reports, and the listener's view of the connecting
pid), which differ by design and are checked on their own. The sentry's log
shows which calls the gofer served and which the kernel kept."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

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
static int listener(const char *path, int type, int backlog) {
    int s = socket(AF_UNIX, type, 0);
    if (bind_path(s, path) < 0) {
        printf("setup bind %s %s\n", path, strerrorname_np(errno));
        exit(1);
    }
    if (type != SOCK_DGRAM && listen(s, backlog) < 0) exit(1);
    return s;
}

static int blocked_result = 99;
static const char *blocked_path;

static void *connect_blocking(void *arg) {
    (void)arg;
    int c = socket(AF_UNIX, SOCK_STREAM, 0);
    blocked_result = connect_path(c, blocked_path) < 0 ? -errno : 0;
    return NULL;
}

int main(int argc, char **argv) {
    char buf[64];
    if (argc > 1 && strcmp(argv[1], "user") == 0) {
        /* as uid 1000: write permission on the socket file is the caller's */
        int c = socket(AF_UNIX, SOCK_STREAM, 0);
        T("user-connect-root-0755", connect_path(c, "/srv/root.sock"));
        T("user-connect-root-0777", connect_path(c, "/srv/open.sock"));
        int d = socket(AF_UNIX, SOCK_STREAM, 0);
        T("user-connect-search-denied", connect_path(d, "/secret/in.sock"));
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "escape") == 0) {
        const char *paths[] = {"/esc-abs", "/esc-rel", "/escdir/host.sock", NULL};
        for (int i = 0; paths[i]; i++) {
            int c = socket(AF_UNIX, SOCK_STREAM, 0);
            errno = 0;
            int r = connect_path(c, paths[i]);
            printf("escape %s %d %s\n", paths[i], r, r < 0 ? strerrorname_np(errno) : "-");
            close(c);
        }
        return 0;
    }

    int srv = listener("/tmp/srv", SOCK_STREAM, 8);
    int c1 = socket(AF_UNIX, SOCK_STREAM, 0);
    int c1dup = dup(c1);
    T("setsockopt-sndbuf", setsockopt(c1, SOL_SOCKET, SO_SNDBUF, &(int){65536}, sizeof(int)));
    T("connect", connect_path(c1, "/tmp/srv"));
    T("connect-again", connect_path(c1, "/tmp/srv"));
    int a1 = accept(srv, NULL, NULL);
    T("accept", a1 >= 0);
    T("send", send(c1, "ping", 4, 0));
    T("recv", recv(a1, buf, sizeof buf, 0));
    /* the same socket: its other descriptor is connected, its options kept */
    struct sockaddr_un peer;
    socklen_t len = sizeof peer;
    T("getpeername-of-dup", getpeername(c1dup, (struct sockaddr *)&peer, &len));
    int sndbuf = 0;
    socklen_t olen = sizeof sndbuf;
    getsockopt(c1, SOL_SOCKET, SO_SNDBUF, &sndbuf, &olen);
    printf("sndbuf-kept %d\n", sndbuf == 2 * 65536);
    printf("still-blocking %d\n", !(fcntl(c1, F_GETFL) & O_NONBLOCK));
    struct ucred cred;
    olen = sizeof cred;
    T("peercred", getsockopt(a1, SOL_SOCKET, SO_PEERCRED, &cred, &olen));
    printf("peercred uid %d gid %d\n", (int)cred.uid, (int)cred.gid);
    printf("name peercred-pid-is-ours %d\n", cred.pid == getpid());

    /* errors, as the kernel gives them */
    int e = socket(AF_UNIX, SOCK_STREAM, 0);
    T("connect-missing", connect_path(e, "/tmp/none"));
    T("connect-missing-dir", connect_path(e, "/nodir/x"));
    T("connect-regular-file", connect_path(e, "/etc/passwd"));
    T("connect-directory", connect_path(e, "/tmp"));
    T("connect-through-file", connect_path(e, "/etc/passwd/x"));
    int unlistened = socket(AF_UNIX, SOCK_STREAM, 0);
    T("bind-unlistened", bind_path(unlistened, "/tmp/quiet"));
    T("connect-not-listening", connect_path(e, "/tmp/quiet"));
    int dg = socket(AF_UNIX, SOCK_DGRAM, 0);
    T("connect-wrong-type", connect_path(dg, "/tmp/srv"));
    T("connect-empty", connect_path(e, ""));
    struct sockaddr_un shortaddr = sun_of("/tmp/srv");
    T("connect-short-addrlen", connect(e, (struct sockaddr *)&shortaddr, 1));
    T("connect-bad-fd", connect_path(99, "/tmp/srv"));
    T("connect-not-a-socket", connect_path(0, "/tmp/srv"));
    T("connect-efault", connect(e, (struct sockaddr *)8, sizeof shortaddr));

    /* through a symlink, relative to the cwd, and a symlinked directory */
    T("symlink", symlink("/tmp/srv", "/tmp/link"));
    int c2 = socket(AF_UNIX, SOCK_STREAM, 0);
    T("connect-symlink", connect_path(c2, "/tmp/link"));
    T("mkdir", mkdir("/tmp/d", 0755));
    T("symlink-dir", symlink("/tmp", "/tmp/d/up"));
    int c3 = socket(AF_UNIX, SOCK_STREAM, 0);
    T("connect-via-dir-link", connect_path(c3, "/tmp/d/up/srv"));
    T("chdir", chdir("/tmp/d"));
    int c4 = socket(AF_UNIX, SOCK_STREAM, 0);
    T("connect-relative", connect_path(c4, "../srv"));
    int c5 = socket(AF_UNIX, SOCK_STREAM, 0);
    T("connect-dotdot-above-root", connect_path(c5, "../../../../tmp/srv"));

    /* datagrams */
    int dsrv = listener("/tmp/dg", SOCK_DGRAM, 0);
    int dc = socket(AF_UNIX, SOCK_DGRAM, 0);
    T("connect-dgram", connect_path(dc, "/tmp/dg"));
    T("send-dgram", send(dc, "hello", 5, 0));
    T("recv-dgram", recv(dsrv, buf, sizeof buf, 0));

    /* a socket that was bound first keeps its name once connected */
    int bound = socket(AF_UNIX, SOCK_DGRAM, 0);
    T("bind-before-connect", bind_path(bound, "/tmp/mine"));
    T("connect-bound", connect_path(bound, "/tmp/dg"));
    T("send-from-bound", send(bound, "x", 1, 0));
    struct sockaddr_un from;
    socklen_t flen = sizeof from;
    T("recvfrom-bound", recvfrom(dsrv, buf, sizeof buf, 0, (struct sockaddr *)&from, &flen));
    printf("name from %s\n", from.sun_path);

    /* the kernel's own: an abstract name, a tmpfs */
    int ab = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un aa;
    memset(&aa, 0, sizeof aa);
    aa.sun_family = AF_UNIX;
    memcpy(aa.sun_path, "\0pysandbox-abstract", 19);
    socklen_t alen = offsetof(struct sockaddr_un, sun_path) + 19;
    T("bind-abstract", bind(ab, (struct sockaddr *)&aa, alen));
    T("listen-abstract", listen(ab, 1));
    int ac = socket(AF_UNIX, SOCK_STREAM, 0);
    T("connect-abstract", connect(ac, (struct sockaddr *)&aa, alen));
    int shm = listener("/dev/shm/k", SOCK_STREAM, 1);
    (void)shm;
    int kc = socket(AF_UNIX, SOCK_STREAM, 0);
    T("connect-dev-shm", connect_path(kc, "/dev/shm/k"));

    /* the address getsockname gives is the one to connect to (a server that
       advertises it: Python's multiprocessing Listener, its test_socket) */
    int adv = listener("/tmp/d/advertised", SOCK_STREAM, 1);
    struct sockaddr_un got;
    socklen_t glen = sizeof got;
    T("getsockname-advertised", getsockname(adv, (struct sockaddr *)&got, &glen));
    printf("getsockname-len %d\n", (int)glen);
    T("chdir-root", chdir("/"));
    int ac2 = socket(AF_UNIX, SOCK_STREAM, 0);
    T("connect-advertised", connect(ac2, (struct sockaddr *)&got, glen));
    struct sockaddr_un small;
    socklen_t slen = 6;
    T("getsockname-short-buffer", getsockname(adv, (struct sockaddr *)&small, &slen));
    printf("getsockname-short %d %.4s\n", (int)slen, small.sun_path);
    slen = (socklen_t)-1;
    T("getsockname-negative-len", getsockname(adv, (struct sockaddr *)&small, &slen));

    /* a full backlog: EAGAIN for a non-blocking socket, a wait for a blocking one */
    int full = listener("/tmp/full", SOCK_STREAM, 0);
    int f1 = socket(AF_UNIX, SOCK_STREAM, 0);
    T("connect-fills-backlog", connect_path(f1, "/tmp/full"));
    int f2 = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    T("connect-nonblocking-full", connect_path(f2, "/tmp/full"));
    blocked_path = "/tmp/full";
    pthread_t th;
    pthread_create(&th, NULL, connect_blocking, NULL);
    usleep(200000);
    printf("blocked-while-full %d\n", blocked_result == 99);
    T("accept-makes-room", accept(full, NULL, NULL) >= 0);
    pthread_join(th, NULL);
    printf("blocking-connect-completed %d\n", blocked_result);
    return 0;
}
"""
)


# The probe's paths are in the root file system: no mount there.
FREE = ("/tmp", "/srv")


@pytest.fixture(scope="module")
def connect_probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_probe(tmp_path_factory.mktemp("probe"), PROBE, "unix-connect")


def test_connect_answers_as_the_kernel_does(
    runtime: Runner, busybox_rootfs: Path, tmp_path: Path, connect_probe: Path, cid: str
) -> None:
    run = probe_against_runc(runtime, tmp_path, busybox_rootfs, connect_probe, cid, free=FREE)
    lines, names, ref_names, log = run.lines, run.names, run.ref_names, run.log
    ours, theirs = run.ours, run.theirs
    for line in (
        "connect 0 -",
        "connect-again -1 EISCONN",
        "getpeername-of-dup 0 -",
        "sndbuf-kept 1",
        "still-blocking 1",
        "peercred uid 0 gid 0",
        "connect-missing -1 ENOENT",
        "connect-regular-file -1 ECONNREFUSED",
        "connect-not-listening -1 ECONNREFUSED",
        "connect-wrong-type -1 EPROTOTYPE",
        "connect-symlink 0 -",
        "connect-relative 0 -",
        "connect-dotdot-above-root 0 -",
        "connect-dgram 0 -",
        "recvfrom-bound 1 -",
        "connect-dev-shm 0 -",
        "getsockname-len 20",
        "connect-advertised 0 -",
        "getsockname-short 20 /tmp",
        "getsockname-negative-len -1 EINVAL",
        "connect-nonblocking-full -1 EAGAIN",
        "blocked-while-full 1",
        "blocking-connect-completed 0",
    ):
        assert line in lines, (line, lines)
    # By design: the listener sees the gofer as the connecting process (a pid
    # the container cannot see); a socket bound through the gofer is named
    # by its last component (syscalls/sockets.py).
    assert ref_names == ["name peercred-pid-is-ours 1", "name from /tmp/mine"]
    assert names == ["name peercred-pid-is-ours 0", "name from mine"]
    # The gofer served the paths of the root; the kernel kept the rest.
    assert "connect(4, {AF_UNIX, '/tmp/srv'}, 110) = 0" in log, log
    assert "{AF_UNIX, '/tmp/none'}, 110) = -1 ENOENT" in log, log
    assert "{AF_UNIX, '/dev/shm/k'}, 110) = (continued in the kernel)" in log, log
    assert "{AF_UNIX, '/tmp/full'}, 110) = -1 EAGAIN" in log, log  # the non-blocking one
    assert "{AF_UNIX, '/tmp/full'}, 110) = (continued in the kernel)" in log, log
    # Nothing was connected or bound in the bundle (runc's sockets are there).
    assert not (ours.rootfs / "tmp" / "srv").exists()
    assert (theirs.rootfs / "tmp" / "srv").is_socket()


def _listening(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(4)
    return s


def test_connect_as_a_user_is_judged_as_that_user(
    runtime: Runner, busybox_rootfs: Path, tmp_path: Path, connect_probe: Path, cid: str
) -> None:
    outputs = []
    listeners = []
    for name in ("ours", "theirs"):
        bundle = probe_bundle(tmp_path, busybox_rootfs, name, connect_probe, "user", free=FREE)
        bundle.config["process"]["user"] = {"uid": 1000, "gid": 1000}
        bundle.write()
        srv = bundle.rootfs / "srv"
        srv.mkdir(exist_ok=True)
        listeners.append(_listening(srv / "root.sock"))
        os.chmod(srv / "root.sock", 0o755)
        listeners.append(_listening(srv / "open.sock"))
        os.chmod(srv / "open.sock", 0o777)
        secret = bundle.rootfs / "secret"
        secret.mkdir()
        listeners.append(_listening(secret / "in.sock"))
        os.chmod(secret / "in.sock", 0o777)
        os.chmod(secret, 0o700)
        if name == "ours":
            # No overlay: these listeners were bound by the host in the image's
            # directory, and an overlay's inode of a socket file in its lower
            # layer is not the one they are bound to (ECONNREFUSED, from the
            # kernel as from the gofer); runc writes the image too.
            res = runtime("--overlay", "none", "run", "--bundle", str(bundle.path), cid)
        else:
            res = run_runc(tmp_path, bundle, cid + "-runc")
        assert res.returncode == 0, res.stdout + res.stderr
        outputs.append(res.stdout)
    for s in listeners:
        s.close()
    assert outputs[0] == outputs[1]
    assert outputs[0].splitlines() == [
        "user-connect-root-0755 -1 EACCES",
        "user-connect-root-0777 0 -",
        "user-connect-search-denied -1 EACCES",
    ]


def test_connect_never_leaves_the_root(
    runtime: Runner, busybox_rootfs: Path, tmp_path: Path, connect_probe: Path, cid: str
) -> None:
    """Symlinks in the image that name a listening socket of the host (absolute,
    ``../``-relative, through a directory): the connect resolves in the
    container's root, finds nothing, and the host's listener sees no one."""
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    canary = _listening(host_dir / "host.sock")
    canary.setblocking(False)
    bundle = probe_bundle(tmp_path, busybox_rootfs, "ours", connect_probe, "escape", free=FREE)
    up = "../" * (len(host_dir.parts) + 2)
    os.symlink(host_dir / "host.sock", bundle.rootfs / "esc-abs")
    os.symlink(up + str(host_dir / "host.sock").lstrip("/"), bundle.rootfs / "esc-rel")
    os.symlink(host_dir, bundle.rootfs / "escdir")
    try:
        res = runtime("run", "--bundle", str(bundle.path), cid)
        assert res.returncode == 0, res.stdout + res.stderr
        assert res.stdout.splitlines() == [
            "escape /esc-abs -1 ENOENT",
            "escape /esc-rel -1 ENOENT",
            "escape /escdir/host.sock -1 ENOENT",
        ]
        with pytest.raises(BlockingIOError):
            canary.accept()
    finally:
        canary.close()
