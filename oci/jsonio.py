"""JSON for the start-up path without importing ``json``.

``json`` imports ``re`` (and through it ``enum``), several milliseconds of every
container start. The C accelerator ``_json`` that ``json`` itself uses has
everything needed to read and write compact JSON; only errors go through the
``json`` module, so their messages (line and column) stay the standard ones.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_CONSTANTS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


class _Context:
    """The attributes _json.make_scanner reads from a JSONDecoder."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict[str, str] = {}

    @staticmethod
    def parse_constant(name: str) -> float:
        return _CONSTANTS[name]


def _no_default(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


# typeshed types the context as a scanner; the C code only reads the attributes.
_scan = _json.make_scanner(_Context())  # type: ignore[arg-type]
_encode = _json.make_encoder(
    None, _no_default, _json.encode_basestring_ascii, None, ":", ",", False, False, True
)
_encode_sorted = _json.make_encoder(
    None, _no_default, _json.encode_basestring_ascii, None, ":", ",", True, False, True
)
_WS = " \t\n\r"


def loads(text: str | bytes) -> Any:
    """Like json.loads; raises json.JSONDecodeError (a ValueError) on bad input."""
    s = text.decode() if isinstance(text, bytes) else text
    start = len(s) - len(s.lstrip(_WS))
    try:
        obj, end = _scan(s, start)
    except StopIteration:
        obj, end = None, -1
    if end < 0 or s[end:].strip(_WS):
        import json

        json.loads(s)  # raises with the standard message
        raise ValueError("invalid JSON")  # pragma: no cover - json.loads raised
    return obj


def dumps(obj: Any) -> str:
    """Compact JSON (separators "," and ":"), ASCII-escaped, like json.dumps with
    separators=(",", ":")."""
    return "".join(_encode(obj, 0))


def dumps_sorted(obj: Any) -> str:
    """Canonical compact JSON: keys sorted (for hashing)."""
    return "".join(_encode_sorted(obj, 0))


def sha256_hex(data: bytes) -> str:
    """sha256 without hashlib, which loads OpenSSL at import (the builtin
    _sha256 is the same digest)."""
    try:
        import _sha256  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover - interpreters without the builtin
        import hashlib

        return hashlib.sha256(data).hexdigest()
    digest: str = _sha256.sha256(data).hexdigest()
    return digest
