"""The runc-compatible command line.

Flags follow Go's flag package, which runc's callers were written against:
``-flag`` and ``--flag`` are the same, values come as ``--flag v`` or
``--flag=v``, and parsing stops at the first non-flag argument (so
``exec ID sh -c ...`` and ``ps ID -o pid`` pass the rest through).
The parser is hand-written because start-up time is a product feature and
argparse alone costs milliseconds to import and build.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from pysandbox import OCI_VERSION, __version__
from pysandbox.oci.log import Logger, RuntimeFailure
from pysandbox.oci.records import field, record
from pysandbox.oci.state import DEFAULT_ROOT


class UsageError(Exception):
    pass


@record
class Flag:
    names: tuple[str, ...]
    takes_value: bool = False
    multi: bool = False
    help: str = ""


@record
class Parsed:
    values: dict[str, str | bool | list[str]] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)

    def opt(self, name: str, default: str | None = None) -> str | None:
        v = self.values.get(name)
        return v if isinstance(v, str) else default

    def flag(self, name: str) -> bool:
        return bool(self.values.get(name, False))

    def many(self, name: str) -> list[str]:
        v = self.values.get(name)
        return v if isinstance(v, list) else []


def parse_flags(flags: Sequence[Flag], argv: Sequence[str]) -> Parsed:
    by_name = {n: f for f in flags for n in f.names}
    out = Parsed()
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            out.args.extend(argv[i + 1 :])
            break
        if not a.startswith("-") or a == "-":
            out.args.extend(argv[i:])
            break
        name, eq, value = a.lstrip("-").partition("=")
        f = by_name.get(name)
        if f is None:
            raise UsageError(f"flag provided but not defined: -{name}")
        key = f.names[0]
        if f.takes_value:
            if not eq:
                i += 1
                if i >= len(argv):
                    raise UsageError(f"flag needs an argument: -{name}")
                value = argv[i]
            if f.multi:
                lst = out.values.setdefault(key, [])
                assert isinstance(lst, list)
                lst.append(value)
            else:
                out.values[key] = value
        else:
            if eq and value.lower() not in ("true", "false", "1", "0", "t", "f"):
                raise UsageError(f'invalid boolean value "{value}" for -{name}')
            out.values[key] = not eq or value.lower() in ("true", "1", "t")
        i += 1
    return out


GLOBAL_FLAGS = (
    Flag(
        ("root",),
        True,
        help=f"root directory for storage of container state (default: {DEFAULT_ROOT})",
    ),
    Flag(("log",), True, help="set the log file to write runtime logs to (default: stderr)"),
    Flag(("log-format",), True, help="set the log format ('text' (default), or 'json')"),
    Flag(("debug",), help="enable debug logging"),
    Flag(("systemd-cgroup",), help="enable systemd cgroup support (not supported: fails clearly)"),
    Flag(("rootless",), True, help="ignore cgroup permission errors ('true', 'false', or 'auto')"),
    Flag(("criu",), True, help="accepted for compatibility; checkpointing is not supported"),
    Flag(
        ("sandbox",),
        True,
        help="sentry (default) or none (no sentry: namespaces, cgroups and seccomp only, as runc)",
    ),
    Flag(("profile",), True, help="sandbox profile name or path (default: default)"),
    Flag(
        ("overlay",),
        True,
        help="root:memory[,size=N] (default: writes go to memory, never to the bundle's rootfs),"
        " root:dir=PATH, or none (the rootfs is written, as runc)",
    ),
    Flag(("strace",), help="log every syscall the sentry serves, with arguments and result"),
    Flag(
        ("debug-log",),
        True,
        help="the sentry's log file (%ID%: the container id; a path ending in / is a directory)",
    ),
    Flag(("help", "h"), help="show help"),
    Flag(("version", "v"), help="print the version"),
)

_CREATE_FLAGS = (
    Flag(("bundle", "b"), True, help="path to the root of the bundle directory (default: .)"),
    Flag(("console-socket",), True, help="AF_UNIX socket that receives the pty master"),
    Flag(("pid-file",), True, help="file to write the container process id to"),
    Flag(("no-pivot",), help="do not use pivot_root (for a rootfs on a ramdisk)"),
    Flag(("no-new-keyring",), help="do not create a new session keyring"),
    Flag(("preserve-fds",), True, help="pass N additional file descriptors to the container"),
    Flag(
        ("pidfd-socket",),
        True,
        help="AF_UNIX socket that receives a pidfd of the container process",
    ),
)

COMMANDS: dict[str, tuple[str, tuple[Flag, ...], str]] = {
    "create": ("create a container", _CREATE_FLAGS, "<container-id>"),
    "start": ("execute the user defined process in a created container", (), "<container-id>"),
    "run": (
        "create and run a container",
        (
            *_CREATE_FLAGS,
            Flag(("detach", "d"), help="detach from the container's process"),
            Flag(("keep",), help="do not delete the container after it exits"),
            Flag(("no-subreaper",), help="accepted for compatibility"),
        ),
        "<container-id>",
    ),
    "state": ("output the state of a container", (), "<container-id>"),
    "kill": (
        "send a signal (default SIGTERM) to the container's init process",
        (Flag(("all", "a"), help="send the signal to all processes in the container"),),
        "<container-id> [signal]",
    ),
    "delete": (
        "delete any resources held by the container",
        (
            Flag(
                ("force", "f"),
                help="forcibly delete the container if it is still running (SIGKILL)",
            ),
        ),
        "<container-id>",
    ),
    "list": (
        "list containers started by pysandbox with the given root",
        (
            Flag(("format", "f"), True, help="table (default) or json"),
            Flag(("quiet", "q"), help="display only container IDs"),
        ),
        "",
    ),
    "ps": (
        "ps displays the processes running inside a container",
        (Flag(("format", "f"), True, help="table (default) or json"),),
        "<container-id> [ps options]",
    ),
    "exec": (
        "execute new process inside the container",
        (
            Flag(("console-socket",), True, help="AF_UNIX socket that receives the pty master"),
            Flag(("cwd",), True, help="current working directory in the container"),
            Flag(("env", "e"), True, True, help="set environment variables"),
            Flag(("tty", "t"), help="allocate a pseudo-TTY"),
            Flag(("user", "u"), True, help="UID (format: <uid>[:<gid>])"),
            Flag(("additional-gids", "g"), True, True, help="additional gids"),
            Flag(("process", "p"), True, help="path to the process.json"),
            Flag(("detach", "d"), help="detach from the container's process"),
            Flag(("pid-file",), True, help="file to write the process id to"),
            Flag(("process-label",), True, help="accepted; SELinux is not supported"),
            Flag(("apparmor",), True, help="accepted; AppArmor is not supported"),
            Flag(("no-new-privs",), help="set the no new privileges value for the process"),
            Flag(("cap", "c"), True, True, help="add a capability to the bounding set"),
            Flag(("preserve-fds",), True, help="pass N additional file descriptors"),
            Flag(("cgroup",), True, help="run the process in a (sub)cgroup"),
            Flag(("ignore-paused",), help="allow exec in a paused container"),
            Flag(("pidfd-socket",), True, help="AF_UNIX socket that receives a pidfd"),
        ),
        "<container-id> <command> [command options]",
    ),
    "pause": ("pause suspends all processes inside the container", (), "<container-id>"),
    "resume": ("resumes all processes that have been previously paused", (), "<container-id>"),
    "update": (
        "update container resource constraints",
        (
            Flag(
                ("resources", "r"), True, help="path to a file with resources JSON, or - for stdin"
            ),
            Flag(("blkio-weight",), True),
            Flag(("cpu-period",), True),
            Flag(("cpu-quota",), True),
            Flag(("cpu-share",), True),
            Flag(("cpu-rt-period",), True),
            Flag(("cpu-rt-runtime",), True),
            Flag(("cpuset-cpus",), True),
            Flag(("cpuset-mems",), True),
            Flag(("kernel-memory",), True),
            Flag(("kernel-memory-tcp",), True),
            Flag(("memory",), True),
            Flag(("memory-reservation",), True),
            Flag(("memory-swap",), True),
            Flag(("pids-limit",), True),
            Flag(("l3-cache-schema",), True),
            Flag(("mem-bw-schema",), True),
        ),
        "<container-id>",
    ),
    "events": (
        "display container events such as OOM notifications and cpu, memory, IO and network stats",
        (
            Flag(("interval",), True, help="set the stats collection interval (default: 5s)"),
            Flag(("stats",), help="display the container's stats then exit"),
        ),
        "<container-id>",
    ),
    "spec": (
        "create a new specification file",
        (
            Flag(("bundle", "b"), True, help="path to the root of the bundle directory"),
            Flag(("rootless",), help="generate a configuration for a rootless container"),
        ),
        "",
    ),
    "features": ("show the enabled features", (), ""),
    "bundle": (
        "write the embedded default bundle (busybox-static rootfs + config.json) to DIR",
        (Flag(("force",), help="overwrite an existing config.json"),),
        "<dir> [command...]",
    ),
    "install": (
        "add pysandbox to docker's daemon.json (keeps everything else; backup first)",
        (
            Flag(("runtime",), True, help="runtime name in daemon.json (default: pysandbox)"),
            Flag(("config",), True, help="daemon.json path (default: /etc/docker/daemon.json)"),
            Flag(("path",), True, help="the runtime binary docker runs (default: this launcher)"),
        ),
        "[-- runtime args...]",
    ),
    "syscalls": (
        "print the x86_64 syscall table with each call's disposition in a profile",
        (
            Flag(("profile", "p"), True, help="profile name or path (default: default)"),
            Flag(("format", "f"), True, help="table (default) or json"),
        ),
        "",
    ),
    "uninstall": (
        "remove pysandbox from docker's daemon.json",
        (
            Flag(("runtime",), True, help="runtime name in daemon.json (default: pysandbox)"),
            Flag(("config",), True, help="daemon.json path (default: /etc/docker/daemon.json)"),
        ),
        "",
    ),
}

_JOINS_A_CGROUP = frozenset({"create", "run", "exec"})
_EXACT_ONE = {"create", "start", "run", "state", "delete", "pause", "resume", "update", "events"}
_EXACT_ZERO = {"list", "spec", "features", "syscalls"}


def version_text() -> str:
    return f"pysandbox version {__version__}\ncommit: v{__version__}\nspec: {OCI_VERSION}\n"


def usage(command: str | None = None) -> str:
    if command is None:
        lines = [
            "NAME:",
            "   pysandbox - a sandboxing OCI runtime (runc-compatible command line)",
            "",
            "USAGE:",
            "   pysandbox [global options] command [command options] [arguments...]",
            "",
            "COMMANDS:",
        ]
        lines += [f"   {name:<10}{desc}" for name, (desc, _, _) in COMMANDS.items()]
        lines += ["", "GLOBAL OPTIONS:"]
        lines += [_flag_line(f) for f in GLOBAL_FLAGS]
        return "\n".join(lines) + "\n"
    desc, flags, args = COMMANDS[command]
    lines = [
        "NAME:",
        f"   pysandbox {command} - {desc}",
        "",
        "USAGE:",
        f"   pysandbox {command} [command options] {args}".rstrip(),
    ]
    if flags:
        lines += ["", "OPTIONS:"] + [_flag_line(f) for f in flags]
    return "\n".join(lines) + "\n"


def _flag_line(f: Flag) -> str:
    names = ", ".join(
        ("--" if len(n) > 1 else "-") + n + (" value" if f.takes_value else "") for n in f.names
    )
    return f"   {names:<34}{f.help}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    log = Logger()
    try:
        g = parse_flags(GLOBAL_FLAGS, argv)
    except UsageError as e:
        log.error(str(e))
        return 1
    log = Logger(g.opt("log"), g.opt("log-format", "text") or "text", g.flag("debug"))
    if g.flag("version"):
        sys.stdout.write(version_text())
        return 0
    if not g.args or g.flag("help"):
        if g.args and g.args[0] in COMMANDS:
            sys.stdout.write(usage(g.args[0]))
        else:
            sys.stdout.write(usage())
        return 0
    command, rest = g.args[0], g.args[1:]
    if command == "help":
        sys.stdout.write(usage(rest[0] if rest and rest[0] in COMMANDS else None))
        return 0
    if command in _JOINS_A_CGROUP:
        # First thing, so the kernel's grace-period wait overlaps everything
        # else this command does (see cgroups.prime_migration).
        from pysandbox.oci.cgroups import prime_migration

        prime_migration()
    if command not in COMMANDS:
        log.error(f"No help topic for '{command}'")
        return 3
    if g.opt("log-format", "text") not in ("text", "json"):
        log.error(f"invalid log-format: {g.opt('log-format')}")
        return 1
    # --debug: record how the caller invoked us (what engines pass is otherwise invisible).
    log.debug(f"pysandbox {command}: argv {argv}")
    _, flags, _ = COMMANDS[command]
    try:
        p = parse_flags((*flags, Flag(("help", "h"))), rest)
    except UsageError as e:
        sys.stderr.write(f"Incorrect Usage: {e}\n\n" + usage(command))
        log.error(str(e))
        return 1
    if p.flag("help"):
        sys.stdout.write(usage(command))
        return 0
    if command in _EXACT_ONE and len(p.args) != 1:
        sys.stderr.write("Incorrect Usage.\n\n" + usage(command))
        log.error(f'pysandbox: "{command}" requires exactly 1 argument(s)')
        return 1
    if command in _EXACT_ZERO and p.args:
        # runc refuses stray arguments here; `spec x` must not silently write ./config.json.
        sys.stderr.write("Incorrect Usage.\n\n" + usage(command))
        log.error(f'pysandbox: "{command}" requires exactly 0 argument(s)')
        return 1
    root = g.opt("root", os.environ.get("PYSANDBOX_ROOT", DEFAULT_ROOT)) or DEFAULT_ROOT
    try:
        handler = _HANDLERS[command]
        return handler(root, log, g, p)
    except RuntimeFailure as e:
        log.error(str(e))
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        log.error(f"{e.strerror or e}{': ' + str(e.filename) if e.filename else ''}")
        return 1
    except Exception as e:
        # The errors of the layers below (cgroups, hooks, console, seccomp, ...)
        # carry their own clear messages; the caller gets that one line, never
        # a traceback (which --debug adds to the log).
        if g.flag("debug"):
            import traceback

            log.debug("".join(traceback.format_exception(e)))
        log.error(str(e) or type(e).__name__)
        return 1


def run_and_exit() -> None:
    """The launcher's entry: run, flush, and leave without interpreter teardown
    (module and GC finalisation cost milliseconds on every command)."""
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        code = code or 1
    os._exit(code)


Handler = Callable[[str, Logger, Parsed, Parsed], int]


def _runtime(root: str, log: Logger, g: Parsed) -> object:
    from pysandbox.oci.lifecycle import Runtime

    return Runtime(
        root,
        log,
        systemd_cgroup=g.flag("systemd-cgroup"),
        sandbox=g.opt("sandbox"),
        profile=g.opt("profile"),
        strace=g.flag("strace"),
        debug_log=g.opt("debug-log") or "",
        overlay=g.opt("overlay"),
    )


def _create_opts(p: Parsed) -> object:
    from pysandbox.oci.lifecycle import CreateOptions

    pf = p.opt("pid-file")
    return CreateOptions(
        bundle=os.path.abspath(p.opt("bundle") or "."),
        pid_file=os.path.abspath(pf) if pf else None,
        console_socket=p.opt("console-socket"),
        no_pivot=p.flag("no-pivot"),
        preserve_fds=_int_flag(p, "preserve-fds", 0),
        pidfd_socket=p.opt("pidfd-socket"),
    )


def _int_flag(p: Parsed, name: str, default: int) -> int:
    v = p.opt(name)
    if v is None:
        return default
    try:
        return int(v)
    except ValueError:
        raise RuntimeFailure(f'invalid value "{v}" for flag -{name}: parse error') from None


def _cmd_create(root: str, log: Logger, g: Parsed, p: Parsed) -> int:
    from pysandbox.oci.lifecycle import CreateOptions, Runtime

    rt = _runtime(root, log, g)
    assert isinstance(rt, Runtime)
    opts = _create_opts(p)
    assert isinstance(opts, CreateOptions)
    rt.create(p.args[0], opts)
    return 0


def _cmd_run(root: str, log: Logger, g: Parsed, p: Parsed) -> int:
    from pysandbox.oci.lifecycle import CreateOptions, Runtime

    rt = _runtime(root, log, g)
    assert isinstance(rt, Runtime)
    opts = _create_opts(p)
    assert isinstance(opts, CreateOptions)
    return rt.run(p.args[0], opts, detach=p.flag("detach"), keep=p.flag("keep"))


def _simple(method: str) -> Handler:
    def handler(root: str, log: Logger, g: Parsed, p: Parsed) -> int:
        rt = _runtime(root, log, g)
        getattr(rt, method)(p.args[0])
        return 0

    return handler


def _cmd_state(root: str, log: Logger, g: Parsed, p: Parsed) -> int:
    from pysandbox.oci.lifecycle import Runtime

    rt = _runtime(root, log, g)
    assert isinstance(rt, Runtime)
    sys.stdout.write(rt.state(p.args[0]))
    return 0


def _cmd_kill(root: str, log: Logger, g: Parsed, p: Parsed) -> int:
    from pysandbox.oci.lifecycle import Runtime, parse_signal

    if len(p.args) not in (1, 2):
        sys.stderr.write("Incorrect Usage.\n\n" + usage("kill"))
        bound = "a minimum of 1" if not p.args else "a maximum of 2"
        raise RuntimeFailure(f'pysandbox: "kill" requires {bound} argument(s)')
    rt = _runtime(root, log, g)
    assert isinstance(rt, Runtime)
    sig = parse_signal(p.args[1] if len(p.args) == 2 else "SIGTERM")
    rt.kill(p.args[0], sig, all_processes=p.flag("all"))
    return 0


def _cmd_delete(root: str, log: Logger, g: Parsed, p: Parsed) -> int:
    from pysandbox.oci.lifecycle import Runtime

    rt = _runtime(root, log, g)
    assert isinstance(rt, Runtime)
    rt.delete(p.args[0], force=p.flag("force"))
    return 0


def _cmd_list(root: str, log: Logger, g: Parsed, p: Parsed) -> int:
    from pysandbox.oci.listing import list_containers

    sys.stdout.write(
        list_containers(root, log, fmt=p.opt("format", "table") or "table", quiet=p.flag("quiet"))
    )
    return 0


def _cmd_ps(root: str, log: Logger, g: Parsed, p: Parsed) -> int:
    from pysandbox.oci.listing import ps

    if not p.args:
        sys.stderr.write("Incorrect Usage.\n\n" + usage("ps"))
        raise RuntimeFailure('pysandbox: "ps" requires a minimum of 1 argument(s)')
    sys.stdout.write(
        ps(root, log, p.args[0], fmt=p.opt("format", "table") or "table", ps_args=p.args[1:])
    )
    return 0


def _cmd_exec(root: str, log: Logger, g: Parsed, p: Parsed) -> int:
    from pysandbox.oci.execute import exec_command

    if not p.args:
        sys.stderr.write("Incorrect Usage.\n\n" + usage("exec"))
        raise RuntimeFailure('pysandbox: "exec" requires a minimum of 1 argument(s)')
    try:
        return exec_command(root, log, p)
    except RuntimeFailure as e:
        # runc's wording and status: callers tell a failed exec (255) from a
        # process that ran and exited.
        log.error(f"exec failed: {e}")
        return 255


def _cmd_update(root: str, log: Logger, g: Parsed, p: Parsed) -> int:
    from pysandbox.oci.resources import update

    update(root, log, p.args[0], p)
    return 0


def _cmd_events(root: str, log: Logger, g: Parsed, p: Parsed) -> int:
    from pysandbox.oci.resources import events

    return events(
        root, log, p.args[0], stats_only=p.flag("stats"), interval=p.opt("interval", "5s") or "5s"
    )


def _cmd_spec(root: str, log: Logger, g: Parsed, p: Parsed) -> int:
    from pathlib import Path

    from pysandbox.oci.specgen import default_spec, write_spec

    bundle = Path(p.opt("bundle") or ".")
    try:
        write_spec(bundle, default_spec(rootless=p.flag("rootless")))
    except FileExistsError as e:
        raise RuntimeFailure(str(e)) from None
    return 0


def _cmd_features(root: str, log: Logger, g: Parsed, p: Parsed) -> int:
    import json

    from pysandbox.oci.features import features_document

    sys.stdout.write(json.dumps(features_document(), indent=4) + "\n")
    return 0


def _cmd_install(root: str, log: Logger, g: Parsed, p: Parsed) -> int:
    from pysandbox.oci.install import install

    msg = install(
        runtime=p.opt("runtime", "pysandbox") or "pysandbox",
        config=p.opt("config", "/etc/docker/daemon.json") or "/etc/docker/daemon.json",
        path=p.opt("path"),
        runtime_args=p.args,
    )
    sys.stdout.write(msg + "\n")
    return 0


def _cmd_uninstall(root: str, log: Logger, g: Parsed, p: Parsed) -> int:
    from pysandbox.oci.install import uninstall

    msg = uninstall(
        runtime=p.opt("runtime", "pysandbox") or "pysandbox",
        config=p.opt("config", "/etc/docker/daemon.json") or "/etc/docker/daemon.json",
    )
    sys.stdout.write(msg + "\n")
    return 0


def _cmd_bundle(root: str, log: Logger, g: Parsed, p: Parsed) -> int:
    from pathlib import Path

    from pysandbox.oci.bundle import write_bundle

    if not p.args:
        raise RuntimeFailure('pysandbox: "bundle" requires a directory argument')
    target = Path(p.args[0])
    if (target / "config.json").exists() and not p.flag("force"):
        sys.stdout.write(f"{target}/config.json exists; keeping it\n")
        return 0
    if p.flag("force"):
        (target / "config.json").unlink(missing_ok=True)
    path = write_bundle(target, p.args[1:] or None)
    sys.stdout.write(f"wrote {path}\n")
    return 0


def _cmd_syscalls(root: str, log: Logger, g: Parsed, p: Parsed) -> int:
    from pysandbox.policies.compiler import PolicyError, load_profile
    from pysandbox.policies.report import format_table, rows

    fmt = p.opt("format", "table") or "table"
    if fmt not in ("table", "json"):
        raise RuntimeFailure(f'invalid format "{fmt}": table or json')
    try:
        profile = load_profile(p.opt("profile", "default") or "default")
    except PolicyError as e:
        raise RuntimeFailure(str(e)) from None
    if fmt == "json":
        import json

        sys.stdout.write(json.dumps(rows(profile), indent=2) + "\n")
    else:
        sys.stdout.write(format_table(profile))
    return 0


_HANDLERS: dict[str, Handler] = {
    "create": _cmd_create,
    "start": _simple("start"),
    "run": _cmd_run,
    "state": _cmd_state,
    "kill": _cmd_kill,
    "delete": _cmd_delete,
    "list": _cmd_list,
    "ps": _cmd_ps,
    "exec": _cmd_exec,
    "pause": _simple("pause"),
    "resume": _simple("resume"),
    "update": _cmd_update,
    "events": _cmd_events,
    "spec": _cmd_spec,
    "features": _cmd_features,
    "bundle": _cmd_bundle,
    "install": _cmd_install,
    "uninstall": _cmd_uninstall,
    "syscalls": _cmd_syscalls,
}
