"""Plain record classes without the import cost of ``dataclasses``.

Start-up latency is a product feature: importing dataclasses (it pulls in
inspect) and generating code for every class costs ~15 ms per run, more than
the rest of a container start in Python. ``record`` gives a class the parts
of a dataclass we use -- keyword/positional __init__ from the annotations,
defaults and ``field(default_factory=...)``, __eq__, __repr__ -- with one
shared __init__ and no code generation. mypy reads it as a dataclass through
``dataclass_transform``.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform

    T = TypeVar("T")

_MISSING = object()


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def field(*, default_factory: Callable[[], T]) -> T:
    """A field whose default is made fresh for every instance."""
    return _Factory(default_factory)  # type: ignore[return-value]


def _fields(cls: type) -> list[tuple[str, Any]]:
    """(name, default or _MISSING or _Factory) in definition order, bases first."""
    out: dict[str, Any] = {}
    for klass in reversed(cls.__mro__[1:]):
        out.update(klass.__dict__.get("__record_fields__", ()))
    for name in cls.__dict__.get("__annotations__", {}):  # noqa: RUF063 - inspect is what we avoid
        if not name.startswith("__"):
            out[name] = cls.__dict__.get(name, _MISSING)
    return list(out.items())


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    spec: list[tuple[str, Any]] = type(self).__record_fields__
    if len(args) > len(spec):
        raise TypeError(f"{type(self).__name__}() takes {len(spec)} arguments, got {len(args)}")
    for i, (name, default) in enumerate(spec):
        if i < len(args):
            value = args[i]
            if name in kwargs:
                raise TypeError(f"{type(self).__name__}() got multiple values for {name!r}")
        elif name in kwargs:
            value = kwargs.pop(name)
        elif default is _MISSING:
            raise TypeError(f"{type(self).__name__}() missing argument {name!r}")
        elif isinstance(default, _Factory):
            value = default.make()
        else:
            value = default
        object.__setattr__(self, name, value)
    extra = set(kwargs) - {n for n, _ in spec}
    if extra:
        raise TypeError(f"{type(self).__name__}() got unexpected arguments {sorted(extra)}")


def _eq(self: Any, other: Any) -> bool:
    if other.__class__ is not self.__class__:
        result: bool = NotImplemented
        return result
    return all(getattr(self, n) == getattr(other, n) for n, _ in self.__record_fields__)


def _repr(self: Any) -> str:
    inner = ", ".join(f"{n}={getattr(self, n)!r}" for n, _ in self.__record_fields__)
    return f"{type(self).__name__}({inner})"


def _make(cls: type[T]) -> type[T]:
    spec = _fields(cls)
    for name, default in spec:
        # Class attributes holding defaults would shadow nothing, but a
        # _Factory left on the class must not leak out as a value.
        if isinstance(default, _Factory) and name in cls.__dict__:
            delattr(cls, name)
    cls.__record_fields__ = spec  # type: ignore[attr-defined]
    cls.__init__ = _init  # type: ignore[method-assign]
    cls.__eq__ = _eq  # type: ignore[method-assign]
    cls.__repr__ = _repr  # type: ignore[method-assign]
    cls.__hash__ = None  # type: ignore[assignment]
    return cls


if TYPE_CHECKING:

    @dataclass_transform(field_specifiers=(field,))
    def record(cls: type[T]) -> type[T]: ...

else:
    record = _make


def as_dict(obj: Any) -> dict[str, Any]:
    """Shallow-recursive conversion of records (and lists/dicts of them) to plain data."""

    def conv(v: Any) -> Any:
        if hasattr(v, "__record_fields__"):
            return {n: conv(getattr(v, n)) for n, _ in v.__record_fields__}
        if isinstance(v, list):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    result: dict[str, Any] = conv(obj)
    return result


# --- typing.NamedTuple without typing ---------------------------------------------
# The sentry, the gofer and create each paid ~4-7 ms of CPU for ``import typing``
# (it pulls in re and enum) only to define a few named tuples, and a container's
# start runs them side by side on two CPUs. The classes built here are
# collections.namedtuple classes, as typing.NamedTuple's are, with the body's
# methods, properties and docstring copied on; mypy reads typing's.

_NOT_COPIED = frozenset(
    {"__module__", "__qualname__", "__annotations__", "__dict__", "__weakref__", "__slots__"}
)


class _NamedTupleMeta(type):
    def __new__(
        mcls, name: str, bases: tuple[type, ...], ns: dict[str, Any]
    ) -> Any:  # a namedtuple class, not one of ours
        from collections import namedtuple

        if "__classcell__" in ns:
            # typing refuses super() and __class__ in a NamedTuple body too
            raise TypeError(f"{name}: no super() or __class__ in a named tuple's methods")
        fields = [f for f in ns.get("__annotations__", {}) if not f.startswith("__")]
        defaults = []
        for f in fields:
            if f in ns:
                defaults.append(ns[f])
            elif defaults:
                raise TypeError(f"{name}: non-default field {f!r} after a default one")
        cls = namedtuple(name, fields, defaults=defaults, module=ns.get("__module__"))  # type: ignore[misc]
        for key, value in ns.items():
            if key not in _NOT_COPIED and key not in fields:
                setattr(cls, key, value)
        cls.__qualname__ = ns.get("__qualname__", name)
        return cls


if TYPE_CHECKING:
    from typing import NamedTuple as NamedTuple
else:
    import os as _os

    if _os.environ.get("TLY") == "1":
        from typing import NamedTuple
    else:
        NamedTuple = type.__new__(_NamedTupleMeta, "NamedTuple", (), {})
