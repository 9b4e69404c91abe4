"""syscalls/execcheck.py against the real kernel: every case builds a real file,
execs it in a forked child (as root, or as another uid with chosen groups and
capabilities) and compares the errno Linux gives with the verdict. Where the
sandbox deliberately refuses what Linux runs, both answers are asserted."""

from __future__ import annotations

import errno
import os
import random
import shutil
import socket
import stat
import struct
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pysandbox.oci import kernel
from pysandbox.syscalls.execcheck import (
    CAP_DAC_OVERRIDE,
    HEAD_SIZE,
    MAX_SCRIPT_DEPTH,
    ElfExec,
    ExecCred,
    ExecFacts,
    ExecVerdict,
    ReadMore,
    Refused,
    ScriptExec,
    check_elf_interpreter,
    check_exec,
    check_exec_chain,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to build and exec")

LD_SO = b"/lib64/ld-linux-x86-64.so.2"
PT_INTERP = 3
EM_X86_64 = 62
EM_AARCH64 = 183
CAP_DAC_READ_SEARCH = 2
USER, GROUP, OTHER_GROUP, STRANGER = 4242, 4343, 4444, 4545


# --- running the real kernel ----------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    errno: int  # 0: the exec succeeded
    status: int  # the child's exit code (negative: killed by that signal)
    stdout: bytes

    def argv(self) -> list[bytes]:
        return self.stdout.split(b"\0")[:-1]


def kernel_exec(
    target: str | int, argv: list[str] | None = None, setup: Callable[[], None] | None = None
) -> Outcome:
    """execve ``target`` (a path, or an fd for execveat AT_EMPTY_PATH) in a
    forked child after ``setup``; a close-on-exec pipe tells whether it did."""
    err_r, err_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.dup2(out_w, 1)
            if setup is not None:
                setup()
            os.execve(target, argv or ["prog"], {})
        except OSError as e:
            os.write(err_w, str(e.errno).encode())
        except BaseException as e:
            os.write(err_w, f"setup failed: {e!r}".encode())
        os._exit(127)
    os.close(err_w)
    os.close(out_w)
    report = b""
    while chunk := os.read(err_r, 4096):
        report += chunk
    out = b""
    while chunk := os.read(out_r, 65536):
        out += chunk
    os.close(err_r)
    os.close(out_r)
    _, status = os.waitpid(pid, 0)
    assert not report.startswith(b"setup failed"), report.decode()
    return Outcome(int(report) if report else 0, os.waitstatus_to_exitcode(status), out)


def become(uid: int, gid: int, groups: tuple[int, ...], caps: int = 0) -> Callable[[], None]:
    """Child setup: drop to uid/gid/groups; keep only ``caps`` (effective).
    setresuid from root to non-root clears the effective and permitted sets
    unless PR_SET_KEEPCAPS keeps the permitted one."""

    def setup() -> None:
        if uid == 0:
            kernel.capset(caps, caps, 0)
            return
        kernel.prctl(kernel.PR_SET_KEEPCAPS, 1)
        os.setgroups(list(groups))
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        kernel.capset(caps, caps, 0)

    return setup


def real_facts(path: str | bytes, fd: int | None = None) -> tuple[ExecFacts, ReadMore]:
    """What the sentry would learn: stat (of the fd if given), head, noexec."""
    st = os.fstat(fd) if fd is not None else os.stat(path)
    head = b""
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            head = f.read(HEAD_SIZE)
    noexec = bool(os.statvfs(path).f_flag & os.ST_NOEXEC)

    def read_more(offset: int, size: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)

    facts = ExecFacts(st.st_mode, st.st_uid, st.st_gid, st.st_size, head, noexec)
    return facts, read_more


def resolve(path: bytes) -> tuple[ExecFacts, ReadMore | None] | int:
    try:
        return real_facts(path)
    except OSError as e:
        return e.errno or errno.EIO


def root_cred() -> ExecCred:
    return ExecCred(0, 0, tuple(os.getgroups()), kernel.capget()[0])


def ours(path: str) -> tuple[ExecVerdict, ...]:
    """The whole chain as root, interpreters resolved like the kernel would."""
    facts, read_more = real_facts(path)
    return check_exec_chain(facts, root_cred(), resolve, read_more)


def name(code: int) -> str:
    return errno.errorcode.get(code, str(code)) if code else "OK"


def assert_agree(path: str, kern: Outcome, chain: tuple[ExecVerdict, ...]) -> None:
    assert name(chain[-1].errno) == name(kern.errno), f"{path}: kernel {kern}, ours {chain}"


# --- building files ---------------------------------------------------------------

TINY_C = 'void _start(void) { __asm__ volatile("mov $60, %eax\\n mov $7, %edi\\n syscall"); }\n'
SHOWARGS_C = """#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    for (int i = 0; i < argc; i++) write(1, argv[i], strlen(argv[i]) + 1);
    return 0;
}
"""


@dataclass(frozen=True)
class Bins:
    dir: Path
    tiny: bytes  # static, no libc, exits 7; program headers right after the ELF header
    showargs: str  # static: prints its argv, NUL-separated
    dyn: str  # a PIE with PT_INTERP = the system's ld.so


@pytest.fixture(scope="module")
def bins(tmp_path_factory: pytest.TempPathFactory) -> Bins:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if shutil.which("gcc") is None:
        pytest.skip("gcc missing (make setup installs it)")
    d = tmp_path_factory.mktemp("bins")
    d.chmod(0o755)
    (d / "tiny.c").write_text(TINY_C)
    (d / "showargs.c").write_text(SHOWARGS_C)
    cc = ["gcc", "-O2", "-o"]
    subprocess.run([*cc, d / "tiny", "-static", "-nostdlib", d / "tiny.c"], check=True)
    subprocess.run([*cc, d / "showargs", "-static", d / "showargs.c"], check=True)
    subprocess.run([*cc, d / "dyn", d / "showargs.c"], check=True)
    return Bins(d, (d / "tiny").read_bytes(), str(d / "showargs"), str(d / "dyn"))


@pytest.fixture
def work(tmp_path: Path, traversable: None) -> Iterator[Path]:
    """A directory every uid can reach (files in it get their own modes)."""
    tmp_path.chmod(0o755)
    yield tmp_path


def put(path: Path, data: bytes, mode: int = 0o755, owner: tuple[int, int] = (0, 0)) -> str:
    path.write_bytes(data)
    os.chown(path, *owner)
    path.chmod(mode)
    return str(path)


def set_phdr(elf: bytes, index: int, p_type: int, offset: int, filesz: int) -> bytes:
    """Rewrite program header ``index`` of an ELF64 LSB file."""
    out = bytearray(elf)
    at = struct.unpack_from("<Q", out, 32)[0] + 56 * index
    struct.pack_into("<II", out, at, p_type, 4)
    struct.pack_into("<QQQQQ", out, at + 8, offset, 0, 0, filesz, filesz)
    return bytes(out)


def set_field(elf: bytes, fmt: str, offset: int, value: int) -> bytes:
    out = bytearray(elf)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def with_interp(tiny: bytes, path: bytes, *, index: int = 3) -> bytes:
    """tiny with its PT_NOTE turned into a PT_INTERP naming ``path``, appended."""
    return set_phdr(tiny + path, index, PT_INTERP, len(tiny), len(path))


def elf32(machine: int, code: bytes) -> bytes:
    """A minimal ELF32 LSB executable: header, one PT_LOAD, code."""
    base, ehsize, phsize = 0x08048000, 52, 32
    total = ehsize + phsize + len(code)
    ident = b"\x7fELF" + bytes([1, 1, 1]) + bytes(9)
    ehdr = struct.pack(
        "<HHIIIIIHHHHHH", 2, machine, 1, base + ehsize + phsize, ehsize, 0, 0, ehsize, phsize, 1,
        40, 0, 0,
    )  # fmt: skip
    phdr = struct.pack("<8I", 1, 0, base, base, total, total, 5, 0x1000)
    return ident + ehdr + phdr + code


def elf64(machine: int, code: bytes) -> bytes:
    """A minimal ELF64 LSB executable: header, one PT_LOAD, code."""
    base, ehsize, phsize = 0x400000, 64, 56
    total = ehsize + phsize + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr = struct.pack(
        "<HHIQQQIHHHHHH", 2, machine, 1, base + ehsize + phsize, ehsize, 0, 0, ehsize, phsize, 1,
        64, 0, 0,
    )  # fmt: skip
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, total, total, 0x1000)
    return ident + ehdr + phdr + code


I386_EXIT_42 = b"\xb8\x01\x00\x00\x00\xbb\x2a\x00\x00\x00\xcd\x80"  # exit(42) via int 0x80
X86_64_EXIT_42 = b"\xb8\x3c\x00\x00\x00\xbf\x2a\x00\x00\x00\x0f\x05"  # exit(42) via syscall
AARCH64_EXIT_42 = bytes.fromhex("400580d2a80b80d2010000d4")  # mov x0,#42; mov x8,#93; svc #0


def binfmt_misc_handlers() -> list[str]:
    try:
        return [
            n for n in os.listdir("/proc/sys/fs/binfmt_misc") if n not in ("register", "status")
        ]
    except OSError:
        return []


# --- permissions and file types ---------------------------------------------------

ALL_CAPS = -1  # stands for the test process's own effective set
CREDS = {
    "root": (0, 0, (), ALL_CAPS),
    "root-nocaps": (0, 0, (), 0),
    "user": (USER, USER, (GROUP,), 0),
    "user+dac_override": (USER, USER, (GROUP,), 1 << CAP_DAC_OVERRIDE),
    "user+dac_read_search": (USER, USER, (GROUP,), 1 << CAP_DAC_READ_SEARCH),
}

FILES = {  # name: (uid, gid, mode)
    "own-u+x": (USER, OTHER_GROUP, 0o100),
    "own-u-x-go+x": (USER, GROUP, 0o611),  # the owner class decides alone
    "own-rw": (USER, USER, 0o600),
    "group-g+x": (STRANGER, GROUP, 0o010),
    "group-o+x-only": (STRANGER, GROUP, 0o001),  # the group class decides alone
    "group-ug+x": (STRANGER, GROUP, 0o110),
    "other-o+x": (STRANGER, STRANGER, 0o001),
    "other-ug+x": (STRANGER, STRANGER, 0o110),
    "other-x-unreadable": (STRANGER, STRANGER, 0o111),  # read is not needed
    "other-none": (STRANGER, STRANGER, 0o000),
    "other-rw": (STRANGER, STRANGER, 0o666),
    "root-u+x": (0, 0, 0o100),  # mode 0100 owned by another uid, for the user
    "root-setuid": (0, 0, 0o4755),
    "root-rw": (0, 0, 0o644),
}


@needs_root
@pytest.mark.parametrize("file", FILES)
def test_permission_matches_kernel(file: str, bins: Bins, work: Path) -> None:
    uid, gid, mode = FILES[file]
    path = put(work / file, bins.tiny, mode, (uid, gid))
    facts, _ = real_facts(path)
    mismatches = []
    for who, (cuid, cgid, groups, caps) in CREDS.items():
        eff = kernel.capget()[0] if caps == ALL_CAPS else caps
        groups = tuple(os.getgroups()) if cuid == 0 else groups
        kern = kernel_exec(path, setup=become(cuid, cgid, groups, eff))
        verdict = check_exec(facts, ExecCred(cuid, cgid, groups, eff))
        if name(kern.errno) != name(verdict.errno):
            mismatches.append(f"{who}: kernel {name(kern.errno)}, ours {verdict}")
        if kern.errno == 0:
            assert kern.status == 7, (who, kern)
    assert not mismatches, mismatches


@needs_root
@pytest.mark.parametrize("kind", ["dir", "fifo", "chardev", "socket"])
def test_only_regular_files_run(kind: str, work: Path) -> None:
    """Whatever their mode, even with every x bit, for root too: EACCES."""
    path = work / kind
    if kind == "dir":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "chardev":
        os.mknod(path, stat.S_IFCHR | 0o777, os.makedev(1, 3))
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    path.chmod(0o777)
    kern = kernel_exec(str(path))
    assert kern.errno == errno.EACCES
    assert_agree(str(path), kern, ours(str(path)))


@needs_root
def test_symlink_followed_or_eloop(bins: Bins, work: Path) -> None:
    target = put(work / "tiny", bins.tiny)
    link = work / "link"
    link.symlink_to(target)
    followed = kernel_exec(str(link))
    assert followed.errno == 0
    assert_agree(str(link), followed, ours(str(link)))
    # execveat(fd of the link itself, "", AT_EMPTY_PATH): the link is opened
    fd = os.open(link, os.O_PATH | os.O_NOFOLLOW)
    try:
        kern = kernel_exec(fd)
        facts, _ = real_facts(str(link), fd)
        verdict = check_exec(facts, root_cred())
    finally:
        os.close(fd)
    assert kern.errno == errno.ELOOP
    assert isinstance(verdict, Refused) and verdict.errno == errno.ELOOP


@needs_root
@pytest.mark.parametrize("noexec", [True, False])
def test_noexec_mount(noexec: bool, bins: Bins, work: Path) -> None:
    """A tmpfs mounted (noexec or not) in the child's own mount namespace."""
    mnt = work / "mnt"
    mnt.mkdir()
    source = put(work / "tiny", bins.tiny)

    def setup() -> None:
        kernel.unshare(kernel.CLONE_NEWNS)
        kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE)
        kernel.mount("tmpfs", str(mnt), "tmpfs", kernel.MS_NOEXEC if noexec else 0)
        shutil.copy2(source, mnt / "tiny")
        assert bool(os.statvfs(mnt).f_flag & os.ST_NOEXEC) == noexec

    kern = kernel_exec(str(mnt / "tiny"), setup=setup)
    facts, _ = real_facts(source)
    verdict = check_exec(facts._replace(noexec_mount=noexec), root_cred())
    assert kern.errno == (errno.EACCES if noexec else 0)
    assert verdict.errno == kern.errno


@needs_root
def test_etxtbsy_is_left_to_the_kernel(bins: Bins, work: Path) -> None:
    """A file open for writing: Linux says ETXTBSY; the facts cannot tell,
    so the verdict allows it and the kernel decides when handed the call."""
    path = put(work / "busy", bins.tiny)
    with open(path, "r+b"):
        kern = kernel_exec(path)
    assert kern.errno == errno.ETXTBSY
    assert ours(path)[-1].allowed


# --- #! scripts ----------------------------------------------------------------------

SCRIPT_LINES = {  # what follows "#!" ({i}: the interpreter that prints its argv)
    "arg-with-blanks": b"{i} a b  \nrest",
    "tabs": b"\t {i}\t-x\t \n",
    "trailing-blanks": b"{i} \t \n",
    "empty": b"\n",
    "blanks-only": b"   \t\n",
    "just-magic": b"",  # a file of two bytes: NUL-padded, an empty path
    "nul-first": b"\0/bin/sh\n",
    "blank-then-nul": b" \0\n",
    "nul-in-arg": b"{i} ab\0cd\n",
    "blank-nul-before-newline": b"{i} \0 junk\n",  # the newline is past the NUL: arg ""
    "cr": b"{i}\r\n",
    "no-newline": b"{i}",
    "no-newline-arg": b"{i} a ",
    "relative-missing": b"no-such-interpreter\n",
    "long-arg": b"{i} " + b"A" * 400,
    "long-path": b"/" * 300,
    "long-path-newline-late": b"{i}" + b"/" * 300 + b"\n",
    "blanks-then-long-path": b" " * 250 + b"{i}\n",
    "all-blanks": b" " * 300,
}


def script_line(body: bytes, interp: str) -> bytes:
    return b"#!" + body.replace(b"{i}", interp.encode())


def pad_to_end(interp: str, before: int, tail: bytes) -> bytes:
    """#! + slashes + interp, ending ``before`` bytes before byte 255, + tail."""
    return b"#!" + b"/" * (254 - before - len(interp)) + interp.encode() + tail


def check_script(path: str, data: bytes, interp: str) -> None:
    put(Path(path), data)
    kern = kernel_exec(path)
    chain = ours(path)
    assert_agree(path, kern, chain)
    first = chain[0]
    if kern.errno == 0 and isinstance(first, ScriptExec) and first.interp == interp.encode():
        expected = [first.interp, *([first.arg] if first.arg is not None else []), path.encode()]
        assert kern.argv() == expected, (data, first)


@needs_root
@pytest.mark.parametrize("case", SCRIPT_LINES)
def test_script_lines(case: str, bins: Bins, work: Path) -> None:
    check_script(str(work / case), script_line(SCRIPT_LINES[case], bins.showargs), bins.showargs)


@needs_root
@pytest.mark.parametrize(
    ("case", "before", "tail"),
    [
        ("path-to-254-blank-then-byte", 1, b" x"),  # byte 255 is dropped
        ("path-to-255", 0, b"x"),  # no blank within the buffer: ENOEXEC
        ("path-to-255-exactly", 0, b""),
        ("path-then-tab-at-255", 0, b"\tzz"),
        ("newline-at-255", 0, b"\n"),
        ("path-to-253-arg", 2, b" ab" + b"c" * 20),
    ],
)
def test_script_line_at_buffer_end(
    case: str, before: int, tail: bytes, bins: Bins, work: Path
) -> None:
    """The 256-byte buffer's last bytes: an interpreter path must end within
    it, the argument may be cut (Linux >= 5.0)."""
    check_script(str(work / case), pad_to_end(bins.showargs, before, tail), bins.showargs)


@needs_root
def test_script_lines_fuzzed(bins: Bins, work: Path) -> None:
    """Seeded random #! lines of blanks, NULs, newlines, CRs and words around
    the 256-byte boundary: the kernel and the verdict agree on each."""
    rng = random.Random(20250101)
    show = bins.showargs.encode()
    tokens = [b" ", b"\t", b"\0", b"\n", b"\r", show, show, show, b"-x", b"ab", b"/", b"C" * 60]
    for n in range(40):
        body = b""
        while len(body) < rng.choice([8, 40, 200, 240, 250, 260, 300]):
            body += rng.choice(tokens)
        check_script(str(work / f"fuzz{n}"), b"#!" + body, bins.showargs)


@needs_root
def test_script_interpreter_is_opened_like_the_file(bins: Bins, work: Path) -> None:
    put(work / "nox", bins.tiny, 0o644)
    put(work / "empty", b"")
    (work / "dir").mkdir()
    for target, expected in [
        ("nox", errno.EACCES),
        ("dir", errno.EACCES),
        ("missing", errno.ENOENT),
        ("empty", errno.ENOEXEC),
    ]:
        path = put(work / f"to-{target}", b"#!" + str(work / target).encode() + b"\n")
        kern = kernel_exec(path)
        assert kern.errno == expected, target
        assert_agree(path, kern, ours(path))


@needs_root
def test_script_chain_depth(bins: Bins, work: Path) -> None:
    """Linux follows MAX_SCRIPT_DEPTH (5) scripts in a row; one more is ELOOP."""
    interp = bins.showargs
    for depth in range(1, MAX_SCRIPT_DEPTH + 3):
        path = put(work / f"chain{depth}", f"#!{interp}\n".encode())
        kern = kernel_exec(path)
        chain = ours(path)
        assert_agree(path, kern, chain)
        assert kern.errno == (0 if depth <= MAX_SCRIPT_DEPTH else errno.ELOOP)
        assert len([v for v in chain if isinstance(v, ScriptExec)]) == min(depth, 6)
        interp = path
    # The sixth script's interpreter is opened before the depth is checked.
    missing = str(work / "missing")
    for depth in range(1, MAX_SCRIPT_DEPTH + 2):
        path = put(work / f"to-missing{depth}", f"#!{missing}\n".encode())
        missing = path
    kern = kernel_exec(path)
    assert kern.errno == errno.ENOENT
    assert_agree(path, kern, ours(path))


@needs_root
@pytest.mark.parametrize(
    ("content", "cloexec", "expected"),
    [
        (b"#!{i}\n", True, errno.ENOENT),  # /dev/fd/N is gone after the exec
        (b"#!{i}\n", False, 0),
        (b"#!\n", True, errno.ENOEXEC),  # the #! line is read first
        (None, True, 0),  # an ELF does not need its path
    ],
)
def test_script_through_cloexec_fd(
    content: bytes | None, cloexec: bool, expected: int, bins: Bins, work: Path
) -> None:
    data = bins.tiny if content is None else content.replace(b"{i}", bins.showargs.encode())
    path = put(work / "viafd", data)
    fd = os.open(path, os.O_RDONLY)
    os.set_inheritable(fd, not cloexec)
    try:
        kern = kernel_exec(fd)
    finally:
        os.close(fd)
    facts, read_more = real_facts(path)
    verdict = check_exec(facts, root_cred(), read_more, path_inaccessible=cloexec)
    assert kern.errno == expected
    assert verdict.errno == expected


# --- ELF -------------------------------------------------------------------------------


def elf_cases(tiny: bytes) -> dict[str, bytes]:
    """Files made from ``tiny`` (5 program headers at 64; the 4th is PT_NOTE)."""
    end = len(tiny)
    phdrs = tiny[64 : 64 + 5 * 56]
    moved = set_field(tiny, "<Q", 32, end) + phdrs  # program headers beyond 4096 bytes

    def many(count: int) -> bytes:  # ``count`` program headers at the end
        return set_field(set_field(tiny, "<Q", 32, end), "<H", 56, count) + phdrs.ljust(
            56 * count, b"\0"
        )

    return {
        "tiny": tiny,
        "empty": b"",
        "text": b"hello world\n",
        "magic-only": b"\x7fELF",
        "e_ident-version-0": set_field(tiny, "B", 6, 0),  # Linux ignores it, so do we
        "e_version-0": set_field(tiny, "<I", 20, 0),
        "type-rel": set_field(tiny, "<H", 16, 1),
        "type-core": set_field(tiny, "<H", 16, 4),
        "machine-386-in-elf64": set_field(tiny, "<H", 18, 3),
        "machine-aarch64": set_field(tiny, "<H", 18, EM_AARCH64),
        "phentsize-55": set_field(tiny, "<H", 54, 55),
        "phnum-0": set_field(tiny, "<H", 56, 0),
        "phnum-74": many(74),  # > one page: fine since Linux 6.x
        "phnum-1170": many(1170),  # 65520 bytes
        "phnum-1171": many(1171),  # 65576 bytes: ENOEXEC
        "phnum-xnum": set_field(tiny, "<H", 56, 0xFFFF),
        "phoff-beyond-eof": set_field(tiny, "<Q", 32, end - 100),
        "phoff-2^63": set_field(tiny, "<Q", 32, 1 << 63),
        "phdrs-beyond-head": moved,
        "no-pt-load": set_phdr(set_phdr(set_phdr(tiny, 0, 4, 0, 0), 1, 4, 0, 0), 2, 4, 0, 0),
        "interp-ld.so": with_interp(tiny, LD_SO + b"\0"),
        "interp-embedded-nul": with_interp(tiny, LD_SO + b"\0junk\0"),
        "interp-empty": with_interp(tiny, b"\0\0"),
        "interp-missing": with_interp(tiny, b"/nonexistent/ld.so\0"),
        "interp-not-nul-terminated": with_interp(tiny, LD_SO),
        "interp-filesz-0": set_phdr(tiny + LD_SO, 3, PT_INTERP, end, 0),
        "interp-filesz-1": set_phdr(tiny + b"\0", 3, PT_INTERP, end, 1),
        "interp-filesz-4097": set_phdr(tiny, 3, PT_INTERP, 0, 4097),
        "interp-beyond-eof": set_phdr(tiny + b"/lib", 3, PT_INTERP, end, 20),
        "interp-far-beyond-eof": set_phdr(tiny, 3, PT_INTERP, 1 << 40, 20),
        "interp-offset-2^63": set_phdr(tiny, 3, PT_INTERP, 1 << 63, 20),
        "interp-end-2^63": set_phdr(tiny, 3, PT_INTERP, (1 << 63) - 5, 20),
        "interp-offset-2^64-1": set_phdr(tiny, 3, PT_INTERP, (1 << 64) - 1, 20),
        "two-interps-first-good": set_phdr(with_interp(tiny, LD_SO + b"\0"), 4, PT_INTERP, 0, 3),
        "two-interps-first-bad": set_phdr(
            with_interp(tiny, LD_SO + b"\0", index=4), 3, PT_INTERP, 0, 3
        ),
    }


ELF_CASES = list(elf_cases(b"\x7fELF" + bytes(1020)))  # the names; the files need gcc


@needs_root
@pytest.mark.parametrize("case", ELF_CASES)
def test_elf_matches_kernel(case: str, bins: Bins, work: Path) -> None:
    path = put(work / case, elf_cases(bins.tiny)[case])
    kern = kernel_exec(path)
    chain = ours(path)
    assert_agree(path, kern, chain)


@needs_root
@pytest.mark.parametrize(
    ("interp", "expected"),
    [
        ("tiny", 0),
        ("ld.so", 0),
        ("tiny-no-x", errno.EACCES),
        ("dir", errno.EACCES),
        ("63-bytes", errno.EIO),  # shorter than an ELF header
        ("64-bytes", errno.ELIBBAD),  # its program headers are not there
        ("script", errno.ELIBBAD),
        ("i386", errno.ELIBBAD),
        ("aarch64", errno.ELIBBAD),
        ("phnum-0", errno.ELIBBAD),
        ("type-rel", 0),  # checked after the point of no return: SIGSEGV
    ],
)
def test_elf_interpreter_matches_kernel(interp: str, expected: int, bins: Bins, work: Path) -> None:
    files = {
        "tiny": bins.tiny,
        "tiny-no-x": bins.tiny,
        "63-bytes": bins.tiny[:63],
        "64-bytes": bins.tiny[:64],
        "script": b"#!/bin/sh\n" + b"#" * 100,
        "i386": elf32(3, I386_EXIT_42),
        "aarch64": elf64(EM_AARCH64, AARCH64_EXIT_42),
        "phnum-0": set_field(bins.tiny, "<H", 56, 0),
        "type-rel": set_field(bins.tiny, "<H", 16, 1),
    }
    if interp == "dir":
        target = str(work / "dir")
        os.mkdir(target)
    elif interp == "ld.so":
        target = LD_SO.decode()
    else:
        target = put(work / interp, files[interp], 0o644 if interp == "tiny-no-x" else 0o755)
    path = put(work / "prog", with_interp(bins.tiny, target.encode() + b"\0"))
    kern = kernel_exec(path)
    chain = ours(path)
    assert kern.errno == expected, kern
    assert_agree(path, kern, chain)
    assert len(chain) == 2 and isinstance(chain[0], ElfExec), chain


@needs_root
def test_dynamic_binary_reports_its_loader(bins: Bins) -> None:
    seen: list[tuple[int, int]] = []
    facts, read_more = real_facts(bins.dyn)

    def recording(offset: int, size: int) -> bytes:
        seen.append((offset, size))
        return read_more(offset, size)

    verdict = check_exec(facts, root_cred(), recording)
    assert verdict == ElfExec("ET_DYN", LD_SO)
    assert isinstance(verdict, ElfExec) and verdict.kind == "elf" and verdict.allowed
    assert seen == []  # the header, program headers and PT_INTERP are in head
    kern = kernel_exec(bins.dyn, ["dyn", "hello"])
    assert kern.errno == 0 and kern.argv() == [b"dyn", b"hello"]
    loader, loader_read = real_facts(LD_SO)
    assert check_elf_interpreter(loader, root_cred(), loader_read).allowed


@needs_root
def test_program_headers_beyond_head(bins: Bins, work: Path) -> None:
    """They are read through read_more; without it the check fails closed."""
    path = put(work / "moved", elf_cases(bins.tiny)["phdrs-beyond-head"])
    facts, read_more = real_facts(path)
    assert facts.size > len(facts.head) == HEAD_SIZE
    assert check_exec(facts, root_cred(), read_more) == ElfExec("ET_EXEC", None)
    assert kernel_exec(path).status == 7
    refused = check_exec(facts, root_cred())
    assert isinstance(refused, Refused) and refused.errno == errno.EIO
    assert not refused.deliberate


@needs_root
def test_pt_interp_read_error_is_the_kernels(bins: Bins, work: Path) -> None:
    """A read error of the PT_INTERP path is returned as is (elf_read)."""
    data = set_phdr(
        bins.tiny + bytes(5000) + LD_SO + b"\0", 3, PT_INTERP, len(bins.tiny) + 5000, 28
    )
    path = put(work / "far-interp", data)
    facts, _ = real_facts(path)

    def failing(offset: int, size: int) -> bytes:
        raise OSError(errno.ESTALE, "file handle went stale")

    verdict = check_exec(facts, root_cred(), failing)
    assert isinstance(verdict, Refused) and verdict.errno == errno.ESTALE


@needs_root
def test_aarch64_elf(work: Path) -> None:
    """No binfmt handler for a foreign machine: ENOEXEC. (With a binfmt_misc
    handler such as qemu-user Linux would run it; the sandbox would not.)"""
    path = put(work / "aarch64", elf64(EM_AARCH64, AARCH64_EXIT_42))
    verdict = ours(path)[-1]
    assert isinstance(verdict, Refused) and verdict.errno == errno.ENOEXEC
    assert not verdict.deliberate
    if binfmt_misc_handlers():
        pytest.skip(f"binfmt_misc handlers registered: {binfmt_misc_handlers()}")
    assert kernel_exec(path).errno == errno.ENOEXEC


@needs_root
def test_handmade_x86_64_elf_runs(work: Path) -> None:
    """The hand-made ELF64 builder is right: the same layout runs on x86_64."""
    path = put(work / "x86_64", elf64(EM_X86_64, X86_64_EXIT_42))
    assert kernel_exec(path).status == 42
    assert ours(path)[-1] == ElfExec("ET_EXEC", None)


# --- where the sandbox deliberately differs ----------------------------------------


@needs_root
def test_i386_elf_runs_on_linux_but_not_in_the_sandbox(work: Path) -> None:
    """Linux with IA32 emulation runs a 32-bit i386 ELF (here: exit(42) via
    int 0x80); the sandbox's filter kills the i386 syscall ABI, so the exec
    is refused up front with ENOEXEC, as gVisor does."""
    path = put(work / "i386", elf32(3, I386_EXIT_42))
    kern = kernel_exec(path)
    assert kern.errno == 0 and kern.status == 42, kern
    verdict = ours(path)[-1]
    assert isinstance(verdict, Refused) and verdict.errno == errno.ENOEXEC
    assert verdict.deliberate


@needs_root
def test_x32_elf_is_refused(work: Path) -> None:
    """ELFCLASS32 + EM_X86_64: Linux runs it only with CONFIG_X86_X32_ABI
    (ENOEXEC otherwise); the sandbox never does."""
    path = put(work / "x32", elf32(EM_X86_64, X86_64_EXIT_42))
    assert kernel_exec(path).errno in (0, errno.ENOEXEC)
    verdict = ours(path)[-1]
    assert isinstance(verdict, Refused) and verdict.errno == errno.ENOEXEC
    assert verdict.deliberate


@needs_root
@pytest.mark.parametrize(("offset", "value"), [(4, 0), (4, 1), (4, 7), (5, 0), (5, 2)])
def test_odd_e_ident_runs_on_linux_but_not_in_the_sandbox(
    offset: int, value: int, bins: Bins, work: Path
) -> None:
    """Linux's x86_64 loader never reads EI_CLASS and EI_DATA: an x86_64
    header runs whatever they say. The sandbox takes ELF64 LSB only (as
    gVisor), for the program (ENOEXEC) and for its interpreter (ELIBBAD)."""
    odd = set_field(bins.tiny, "B", offset, value)
    path = put(work / "odd", odd)
    kern = kernel_exec(path)
    assert kern.errno == 0 and kern.status == 7, kern
    verdict = ours(path)[-1]
    assert isinstance(verdict, Refused) and verdict.errno == errno.ENOEXEC
    assert verdict.deliberate

    interp = put(work / "odd-interp", odd)
    prog = put(work / "prog", with_interp(bins.tiny, interp.encode() + b"\0"))
    assert kernel_exec(prog).errno == 0
    last = ours(prog)[-1]
    assert isinstance(last, Refused) and last.errno == errno.ELIBBAD and last.deliberate


# --- the verdict types -----------------------------------------------------------------


def test_verdicts_say_what_they_are() -> None:
    elf = ElfExec("ET_DYN", LD_SO)
    script = ScriptExec(b"/bin/sh", b"-e")
    refused = Refused(errno.ENOEXEC, "why")
    assert (elf.kind, elf.allowed, elf.errno, elf.machine, elf.elf_class) == (
        "elf", True, 0, "EM_X86_64", 64,
    )  # fmt: skip
    assert (script.kind, script.allowed, script.errno) == ("script", True, 0)
    assert (refused.allowed, refused.errno, refused.deliberate) == (False, errno.ENOEXEC, False)


def test_check_exec_does_no_io_for_scripts() -> None:
    """Pure: facts in, verdict out; read_more is not called for what head holds."""

    def no_io(offset: int, size: int) -> bytes:
        raise AssertionError("read_more called")

    facts = ExecFacts(stat.S_IFREG | 0o755, 0, 0, 14, b"#!/bin/sh -eu\n", False)
    user = ExecCred(USER, USER, (), 0)
    assert check_exec(facts, user, no_io) == ScriptExec(b"/bin/sh", b"-eu")
    assert check_exec(facts._replace(mode=stat.S_IFREG | 0o754), user).errno == errno.EACCES


@pytest.mark.parametrize(
    "path",
    ["/bin/ls", "/usr/bin/python3", "/lib64/ld-linux-x86-64.so.2", "/bin/busybox", "/usr/bin/gcc"],
)
def test_the_struct_reading_agrees_with_pyelftools(path: str) -> None:
    """execcheck reads the ELF header and program headers with struct (pyelftools
    costs ~40 ms to import in every sentry); pyelftools is the reference."""
    import io

    from elftools.elf.elffile import ELFFile

    from pysandbox.syscalls import execcheck

    if not os.path.exists(path):
        pytest.skip(f"{path} is not on this machine")
    with open(path, "rb") as f:
        data = f.read()
    ref = ELFFile(io.BytesIO(data))
    ours = execcheck._elf_header(data)
    assert ours is not None
    assert ours.type_name == ref["e_type"] and ours.machine_name == ref["e_machine"]
    assert (ours.e_phoff, ours.e_phentsize, ours.e_phnum) == (
        ref["e_phoff"],
        ref["e_phentsize"],
        ref["e_phnum"],
    )
    facts = ExecFacts(mode=0o100755, uid=0, gid=0, size=len(data), head=data, noexec_mount=False)
    phdrs = execcheck._program_headers(ours, facts, None)
    assert isinstance(phdrs, list)
    p_type_names = {"PT_INTERP": 3, "PT_LOAD": 1, "PT_DYNAMIC": 2}
    expected = [
        (p_type_names.get(p["p_type"], p["p_type"]), p["p_offset"], p["p_filesz"])
        for p in ref.iter_segments()
    ]
    got = [(t, o, n) for t, o, n in phdrs]
    for (et, eo, en), (gt, go, gn) in zip(expected, got, strict=True):
        assert (eo, en) == (go, gn)
        if isinstance(et, int):
            assert et == gt
