"""Profiles (TOML data files) and their compiler to a seccomp filter + sentry routing.

A profile gives every syscall of :mod:`pysandbox.syscalls.table` exactly one
disposition (see DESIGN.md, "Syscall dispositions"):

``sentry``
    SECCOMP_RET_USER_NOTIF; the routing table names the handler
    (``"<area>.<name>"`` unless ``[sentry.handlers]`` says otherwise).
``host``
    allowed. ``[host.rules.NAME]`` constrains the arguments: the call is
    allowed when one of the ``allow`` alternatives matches; otherwise it gets
    ``else`` -- ``"sentry"`` (then it is routed too) or an errno name.
``deny``
    ``[deny] ERRNO = [names]``: refused with that errno.

Anything that is not in the table (the unused range 335..423, numbers above
the table) gets ENOSYS. Other ABIs are killed (SECCOMP_RET_KILL_PROCESS): the
filter starts with an arch check for AUDIT_ARCH_X86_64 and a check for the
x32 bit (0x40000000), because x32 calls carry the x86_64 audit arch.

A profile may ``extends = "other"``: the syscalls it names take the new
disposition, everything else is inherited. Validation names the file and the
syscall: unknown names, a syscall with two dispositions in one file, and
syscalls left without one are errors.

Alternatives in ``allow`` are tables ``{argN = condition, ...}`` whose
conditions are ANDed; a condition is a value (integer or a name from
``constants.toml``), a list of values (any of them; a group name expands to
its members) or ``{clear = names}`` (none of those bits set). ``bits = 32``
compares only the low 32 bits, for arguments the kernel reads as ``int``
(a sign-extended value then matches too).
"""

from __future__ import annotations

import os

from pysandbox.oci.records import field, record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Final

__all__ = [
    "BUILTIN_PROFILES",
    "DISPOSITIONS",
    "CompiledPolicy",
    "Cond",
    "Disposition",
    "HostRule",
    "PolicyError",
    "Profile",
    "compile_cached",
    "compile_profile",
    "load_profile",
    "profile_path",
    "routing_table",
]

_HERE: Final = os.path.dirname(os.path.abspath(__file__))
BUILTIN_PROFILES: Final[tuple[str, ...]] = ("default", "strict", "ci")
DISPOSITIONS: Final[tuple[str, ...]] = ("sentry", "host", "deny")

# --- kernel ABI (linux/seccomp.h, linux/audit.h) -----------------------------------
_RET_KILL_PROCESS: Final = 0x80000000
_AUDIT_ARCH_X86_64: Final = 0xC000003E
_X32_SYSCALL_BIT: Final = 0x40000000
_ENOSYS: Final = 38
_ENOTSUP: Final = 95
_U32: Final = 0xFFFFFFFF
_U64: Final = (1 << 64) - 1
_BPF_MAXINSNS: Final = 4096
# Bump when the generated program changes for the same profile (cache key).
_CACHE_FORMAT: Final = "pysandbox-policy-1"


class PolicyError(Exception):
    """An invalid profile; the message names the file and the syscall or key."""


@record
class Cond:
    """One argument comparison: ``(arg & mask) == value``."""

    arg: int
    mask: int
    value: int


@record
class HostRule:
    """Allowed when one alternative (a tuple of ANDed conditions) matches."""

    alternatives: tuple[tuple[Cond, ...], ...]
    otherwise: str  # "sentry" or an errno name
    summary: str  # the constraint in words, generated from the data


@record
class Disposition:
    kind: str  # "sentry" | "host" | "deny"
    errno: str | None = None  # deny: the errno's name
    rule: HostRule | None = None  # host: argument constraints, if any
    handler: str | None = None  # sentry (and host rules whose else is sentry)
    note: str = ""
    source: str = ""  # the file that decided it


@record
class Profile:
    name: str
    description: str
    path: str
    extends: str | None
    dispositions: dict[str, Disposition] = field(default_factory=dict)

    def digest(self) -> str:
        """sha256 of the canonical content (what the compiled filter depends on)."""
        import hashlib
        import json

        canon = {
            name: [
                d.kind,
                d.errno,
                d.handler,
                None
                if d.rule is None
                else [
                    d.rule.otherwise,
                    [[[c.arg, c.mask, c.value] for c in alt] for alt in d.rule.alternatives],
                ],
            ]
            for name, d in sorted(self.dispositions.items())
        }
        return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()


@record
class CompiledPolicy:
    """What the runtime and the sentry need from a profile.

    ``bpf`` is the classic BPF program for seccomp(SECCOMP_SET_MODE_FILTER);
    ``routing`` maps each number the filter can notify to its handler name;
    ``needs_listener``: load with SECCOMP_FILTER_FLAG_NEW_LISTENER.
    """

    bpf: bytes
    routing: dict[int, str]
    needs_listener: bool
    profile: str
    digest: str


# --- loading --------------------------------------------------------------------


def _toml(path: str) -> dict[str, Any]:
    import tomllib

    try:
        with open(path, "rb") as f:
            data: dict[str, Any] = tomllib.load(f)
    except FileNotFoundError:
        raise PolicyError(f"{path}: no such profile") from None
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{path}: {e}") from None
    return data


_constants: tuple[dict[str, int], dict[str, tuple[int, ...]]] | None = None


def _load_constants() -> tuple[dict[str, int], dict[str, tuple[int, ...]]]:
    global _constants
    if _constants is None:
        path = os.path.join(_HERE, "constants.toml")
        data = _toml(path)
        values: dict[str, int] = dict(data.get("values", {}))
        groups: dict[str, tuple[int, ...]] = {}

        def expand(name: str, seen: tuple[str, ...]) -> tuple[int, ...]:
            if name in values:
                return (values[name],)
            if name in seen or name not in data.get("groups", {}):
                raise PolicyError(f"{path}: [groups]: unknown or cyclic name {name!r}")
            out: list[int] = []
            for member in data["groups"][name]:
                out.extend(expand(member, (*seen, name)))
            return tuple(dict.fromkeys(out))

        for g in data.get("groups", {}):
            groups[g] = expand(g, ())
        _constants = (values, groups)
    return _constants


def profile_path(name_or_path: str) -> str:
    """A bundled profile's file for a bare name; a path as it is."""
    if os.sep in name_or_path or name_or_path.endswith(".toml"):
        return name_or_path
    return os.path.join(_HERE, f"{name_or_path}.toml")


def _errno_name(name: Any, where: str) -> str:
    import errno

    if not isinstance(name, str) or not name.isupper() or not hasattr(errno, name):
        raise PolicyError(f"{where}: unknown errno {name!r}")
    return name


def _values(spec: Any, where: str) -> tuple[int, ...]:
    values, groups = _load_constants()
    items = spec if isinstance(spec, list) else [spec]
    out: list[int] = []
    for item in items:
        if isinstance(item, bool):
            raise PolicyError(f"{where}: expected an integer or a constant name, got {item!r}")
        if isinstance(item, int):
            if not 0 <= item <= _U64:
                raise PolicyError(f"{where}: {item} out of range")
            out.append(item)
        elif isinstance(item, str):
            if item in values:
                out.append(values[item])
            elif item in groups:
                out.extend(groups[item])
            else:
                raise PolicyError(f"{where}: unknown constant {item!r} (see constants.toml)")
        else:
            raise PolicyError(f"{where}: expected an integer or a constant name, got {item!r}")
    if not out:
        raise PolicyError(f"{where}: empty")
    return tuple(dict.fromkeys(out))


def _host_rule(name: str, spec: Any, where: str, nargs: int) -> tuple[HostRule, str]:
    if not isinstance(spec, dict):
        raise PolicyError(f"{where}: expected a table")
    unknown = set(spec) - {"allow", "else", "bits", "note"}
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {sorted(unknown)}")
    bits = spec.get("bits", 64)
    if bits not in (32, 64):
        raise PolicyError(f"{where}.bits: 32 or 64, got {bits!r}")
    width = _U32 if bits == 32 else _U64
    otherwise = spec.get("else")
    if otherwise != "sentry":
        otherwise = _errno_name(otherwise, f"{where}.else")
    allow = spec.get("allow")
    if not isinstance(allow, list) or not allow:
        raise PolicyError(f"{where}.allow: expected a non-empty list of alternatives")
    import itertools

    alternatives: list[tuple[Cond, ...]] = []
    words: list[str] = []
    for i, alt in enumerate(allow):
        awhere = f"{where}.allow[{i}]"
        if not isinstance(alt, dict) or not alt:
            raise PolicyError(f"{awhere}: expected a table of argN = condition")
        per_arg: list[list[Cond]] = []
        alt_words: list[str] = []
        for key, cond in alt.items():
            cwhere = f"{awhere}.{key}"
            if not (key.startswith("arg") and key[3:].isdigit()):
                raise PolicyError(f"{cwhere}: keys are arg0 .. arg5")
            arg = int(key[3:])
            if arg >= min(nargs, 6):
                raise PolicyError(f"{cwhere}: {name} takes {nargs} argument(s)")
            if isinstance(cond, dict):
                if set(cond) != {"clear"}:
                    raise PolicyError(f"{cwhere}: a table condition is {{clear = names}}")
                mask = 0
                for v in _values(cond["clear"], f"{cwhere}.clear"):
                    mask |= v
                per_arg.append([Cond(arg, mask & width, 0)])
                alt_words.append(f"{key} & {mask:#x} == 0")
            else:
                vals = _values(cond, cwhere)
                per_arg.append([Cond(arg, width, v & width) for v in vals])
                shown = cond if isinstance(cond, list) else [cond]
                alt_words.append(f"{key} in {{{', '.join(str(s) for s in shown)}}}")
        for combo in itertools.product(*per_arg):
            alternatives.append(tuple(combo))
        words.append(" and ".join(alt_words))
    summary = f"allowed if {' or '.join(words)}; else {otherwise}"
    note = spec.get("note", "")
    if not isinstance(note, str):
        raise PolicyError(f"{where}.note: expected a string")
    return HostRule(tuple(alternatives), otherwise, summary), note


def _names(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{where}: expected a list of syscall names")
    return value


def _own_dispositions(data: dict[str, Any], path: str) -> dict[str, Disposition]:
    """The dispositions one file assigns (not inherited ones)."""
    from pysandbox.syscalls import table

    src = os.path.basename(path)
    own: dict[str, Disposition] = {}
    where_of: dict[str, str] = {}

    def put(name: str, disp: Disposition, where: str) -> None:
        sc = table.by_name(name)
        if sc is None:
            raise PolicyError(f"{path}: {where}: unknown syscall {name!r}")
        if name in own:
            raise PolicyError(
                f"{path}: syscall {name!r} has two dispositions: {where_of[name]} and {where}"
            )
        own[name] = disp
        where_of[name] = where

    sentry = data.get("sentry", {})
    if not isinstance(sentry, dict):
        raise PolicyError(f"{path}: [sentry]: expected a table")
    if set(sentry) - {"calls", "handlers"}:
        raise PolicyError(
            f"{path}: [sentry]: unknown key(s) {sorted(set(sentry) - {'calls', 'handlers'})}"
        )
    handlers = sentry.get("handlers", {})
    if not isinstance(handlers, dict) or not all(isinstance(v, str) for v in handlers.values()):
        raise PolicyError(f'{path}: [sentry.handlers]: expected name = "module.function"')
    for name in _names(sentry.get("calls", []), f"{path}: [sentry].calls"):
        put(name, Disposition("sentry", handler=handlers.get(name), source=src), "[sentry]")

    host = data.get("host", {})
    if not isinstance(host, dict) or set(host) - {"calls", "rules"}:
        raise PolicyError(f"{path}: [host]: expected keys calls and rules")
    for name in _names(host.get("calls", []), f"{path}: [host].calls"):
        put(name, Disposition("host", source=src), "[host]")
    rules = host.get("rules", {})
    if not isinstance(rules, dict):
        raise PolicyError(f"{path}: [host.rules]: expected a table")
    for name, spec in rules.items():
        where = f"[host.rules.{name}]"
        sc = table.by_name(name)
        if sc is None:
            raise PolicyError(f"{path}: {where}: unknown syscall {name!r}")
        rule, note = _host_rule(name, spec, f"{path}: {where}", len(sc.args))
        handler = handlers.get(name) if rule.otherwise == "sentry" else None
        put(name, Disposition("host", rule=rule, handler=handler, note=note, source=src), where)

    deny = data.get("deny", {})
    if not isinstance(deny, dict):
        raise PolicyError(f"{path}: [deny]: expected ERRNO = [names]")
    for err, names in deny.items():
        where = f"[deny].{err}"
        _errno_name(err, f"{path}: {where}")
        for name in _names(names, f"{path}: {where}"):
            put(name, Disposition("deny", errno=err, source=src), where)

    for name in handlers:
        if name not in own or own[name].handler is None:
            raise PolicyError(
                f"{path}: [sentry.handlers]: {name!r} is not routed to the sentry in this file"
            )
    return own


def _load(path: str, chain: tuple[str, ...]) -> Profile:
    from pysandbox.syscalls import table

    real = os.path.realpath(path)
    if real in chain:
        raise PolicyError(f"{path}: extends itself (cycle: {' -> '.join((*chain, real))})")
    data = _toml(path)
    unknown = set(data) - {"name", "description", "extends", "sentry", "host", "deny", "notes"}
    if unknown:
        raise PolicyError(f"{path}: unknown top-level key(s) {sorted(unknown)}")
    name = data.get("name", os.path.splitext(os.path.basename(path))[0])
    description = data.get("description", "")
    extends = data.get("extends")
    if not isinstance(name, str) or not isinstance(description, str):
        raise PolicyError(f"{path}: name and description must be strings")
    if extends is not None and not isinstance(extends, str):
        raise PolicyError(f"{path}: extends must be a profile name or path")

    merged: dict[str, Disposition] = {}
    if extends:
        parent_path = profile_path(extends)
        if os.sep in extends and not os.path.isabs(extends):
            parent_path = os.path.join(os.path.dirname(path), extends)
        merged = dict(_load(parent_path, (*chain, real)).dispositions)
    merged.update(_own_dispositions(data, path))

    notes = data.get("notes", {})
    if not isinstance(notes, dict):
        raise PolicyError(f'{path}: [notes]: expected name = "text"')
    for sname, text in notes.items():
        if table.by_name(sname) is None:
            raise PolicyError(f"{path}: [notes]: unknown syscall {sname!r}")
        if sname in merged and isinstance(text, str):
            merged[sname] = Disposition(
                merged[sname].kind,
                errno=merged[sname].errno,
                rule=merged[sname].rule,
                handler=merged[sname].handler,
                note=text,
                source=merged[sname].source,
            )

    # Default handler names: "<area>.<name>" for everything the sentry may see.
    for sname, d in merged.items():
        routed = d.kind == "sentry" or (d.rule is not None and d.rule.otherwise == "sentry")
        if routed and d.handler is None:
            sc = table.by_name(sname)
            assert sc is not None
            d.handler = f"{sc.area}.{sname}"
    return Profile(name, description, path, extends, merged)


def load_profile(name_or_path: str) -> Profile:
    """Load and validate a profile (a bundled name or a path to a TOML file).

    Raises :class:`PolicyError` naming the file and the syscall: an unknown
    syscall, one with two dispositions in one file, or any of the table's
    syscalls left without a disposition.
    """
    from pysandbox.syscalls import table

    path = profile_path(name_or_path)
    prof = _load(path, ())
    missing = [s.name for s in table.all_syscalls() if s.name not in prof.dispositions]
    if missing:
        raise PolicyError(
            f"{path}: profile {prof.name!r} gives no disposition to {len(missing)} "
            f"syscall(s): {', '.join(missing)}"
        )
    return prof


# --- compilation ------------------------------------------------------------------


def routing_table(profile: Profile) -> dict[int, str]:
    """nr -> handler name for every syscall the filter may notify."""
    from pysandbox.syscalls import table

    out: dict[int, str] = {}
    for name, d in profile.dispositions.items():
        if d.handler is not None:
            sc = table.by_name(name)
            assert sc is not None
            out[sc.nr] = d.handler
    return dict(sorted(out.items()))


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    import struct

    return struct.pack("=HBBI", code, jt, jf, k)


def _abi_prefix() -> bytes:
    """Kill any other ABI before libseccomp's program runs: a foreign audit arch
    (i386 ``int 0x80``) or an x32 number (x32 calls carry AUDIT_ARCH_X86_64)."""
    ld_w_abs, jeq_k, jge_k, ja, ret_k = 0x20, 0x15, 0x35, 0x05, 0x06
    return b"".join(
        (
            _insn(ld_w_abs, 0, 0, 4),  # 0: A = arch
            _insn(jeq_k, 0, 3, _AUDIT_ARCH_X86_64),  # 1: foreign -> 5
            _insn(ld_w_abs, 0, 0, 0),  # 2: A = nr
            _insn(jge_k, 1, 0, _X32_SYSCALL_BIT),  # 3: x32 -> 5
            _insn(ja, 0, 0, 1),  # 4: -> 6 (libseccomp's program)
            _insn(ret_k, 0, 0, _RET_KILL_PROCESS),  # 5
        )
    )


def _compile(profile: Profile, sentry_action: str) -> bytes:
    import errno
    import tempfile

    import pyseccomp  # lazily: ~25 ms, and the container's init never needs it

    from pysandbox.syscalls import table

    default = pyseccomp.ERRNO(_ENOSYS)
    notify = pyseccomp.NOTIFY if sentry_action == "notify" else pyseccomp.ERRNO(_ENOTSUP)
    filt = pyseccomp.SyscallFilter(default)
    filt.set_attr(pyseccomp.Attr.CTL_NNP, 0)
    filt.set_attr(pyseccomp.Attr.ACT_BADARCH, pyseccomp.KILL_PROCESS)
    try:
        filt.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, 2)  # binary tree over ~380 numbers
    except OSError:
        pass

    def action(target: str) -> Any:
        if target == "sentry":
            return notify
        return pyseccomp.ERRNO(getattr(errno, target))

    for sc in table.all_syscalls():
        d = profile.dispositions[sc.name]
        where = f"{profile.path}: {sc.name}"
        try:
            if d.kind == "sentry":
                filt.add_rule(notify, sc.nr)
            elif d.kind == "deny":
                assert d.errno is not None
                if getattr(errno, d.errno) != _ENOSYS:  # ENOSYS is the default action
                    filt.add_rule(pyseccomp.ERRNO(getattr(errno, d.errno)), sc.nr)
            elif d.rule is None:
                filt.add_rule(pyseccomp.ALLOW, sc.nr)
            else:
                for alt in d.rule.alternatives:
                    args = [pyseccomp.Arg(c.arg, pyseccomp.MASKED_EQ, c.mask, c.value) for c in alt]
                    filt.add_rule(pyseccomp.ALLOW, sc.nr, *args)
                # The fallback: a condition that always holds but that libseccomp
                # keeps as a condition, so it is tested after the allow-list
                # (an unconditional rule would replace the conditional ones).
                other = action(d.rule.otherwise)
                first = min(c.arg for alt in d.rule.alternatives for c in alt)
                if d.rule.otherwise != "ENOSYS":
                    filt.add_rule(other, sc.nr, pyseccomp.Arg(first, pyseccomp.GE, 0))
        except OSError as e:
            raise PolicyError(f"{where}: libseccomp rejected the rule: {e}") from None

    with tempfile.TemporaryFile() as buf:
        filt.export_bpf(buf)
        buf.seek(0)
        prog = _abi_prefix() + buf.read()
    if len(prog) % 8 or len(prog) // 8 > _BPF_MAXINSNS:
        raise PolicyError(f"{profile.path}: compiled program has {len(prog) // 8} instructions")
    return prog


def _check_action(sentry_action: str) -> None:
    if sentry_action not in ("notify", "errno"):
        raise ValueError(f"sentry_action: 'notify' or 'errno', got {sentry_action!r}")


def compile_profile(profile: Profile, *, sentry_action: str = "notify") -> CompiledPolicy:
    """Compile a profile with libseccomp.

    ``sentry_action="errno"`` answers sentry syscalls ENOTSUP instead of
    notifying (for tests that load the filter with no sentry behind it).
    """
    _check_action(sentry_action)
    routing = routing_table(profile)
    return CompiledPolicy(
        bpf=_compile(profile, sentry_action),
        routing=routing,
        needs_listener=sentry_action == "notify" and bool(routing),
        profile=profile.name,
        digest=profile.digest(),
    )


def compile_cached(
    profile: Profile, cache_dir: str | None, *, sentry_action: str = "notify"
) -> CompiledPolicy:
    """Like :func:`compile_profile`, with the BPF kept in ``cache_dir/<sha256>.bpf``.

    The key hashes the profile's canonical content, the sentry action and a
    format version. ``cache_dir`` must be writable only by the runtime's user.
    """
    _check_action(sentry_action)
    if cache_dir is None:
        return compile_profile(profile, sentry_action=sentry_action)
    import hashlib

    digest = profile.digest()
    key = hashlib.sha256(f"{_CACHE_FORMAT}\n{sentry_action}\n{digest}".encode()).hexdigest()
    path = os.path.join(cache_dir, f"policy-{key}.bpf")
    routing = routing_table(profile)
    listener = sentry_action == "notify" and bool(routing)
    from pysandbox.oci.seccomp import read_cached_bpf, write_cached_bpf

    cached = read_cached_bpf(path)
    if cached is not None:
        return CompiledPolicy(cached, routing, listener, profile.name, digest)
    prog = _compile(profile, sentry_action)
    write_cached_bpf(path, prog)
    return CompiledPolicy(prog, routing, listener, profile.name, digest)


def as_errno(name: str) -> int:
    import errno

    value: int = getattr(errno, name)
    return value


def summary_counts(profile: Profile) -> Mapping[str, int]:
    """Count of syscalls per disposition."""
    counts = dict.fromkeys(DISPOSITIONS, 0)
    for d in profile.dispositions.values():
        counts[d.kind] += 1
    return counts
