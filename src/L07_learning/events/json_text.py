"""JSON reading and canonical writing on the ingestion hot path: orjson's speed with the standard library's results.

orjson reads and writes JSON several times faster than ``json``, but a few of its results differ: it refuses
``NaN``/``Infinity`` and overflowing numbers, reads integers beyond 64 bits as floats, nests at most 1024 levels, and
writes floats outside ``[1e-4, 1e16)`` in another exponent notation. Each function below uses orjson only where its
result is provably the standard library's and falls back to ``json`` everywhere else, so events read, prompts and
hashes come out exactly as before.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# Digits mapped to "0", so that digit patterns become plain substring searches (a regex scan costs ~10x more).
_DIGITS_TO_ZERO = bytes.maketrans(b"0123456789", b"0000000000")
# orjson reads integers outside [-2**63 + 1, 2**64 - 1] as floats, which some 19-digit and every 20-digit integer
# is, and nests at most 1024 levels (256+ brackets could come near the recursion limit json reads with): such text is
# read by json itself.
_LONG_INTEGER = b"0" * 19
_MAX_BRACKETS = 256
_SORTED = orjson.OPT_SORT_KEYS


def read(text: str | bytes) -> tuple[Any, bool]:
    """``json.loads(text)``: the same value, or the same exception; plus whether orjson read it (then the value holds
    finite floats and 64-bit integers only)."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if data.count(b"{") + data.count(b"[") < _MAX_BRACKETS and _LONG_INTEGER not in data.translate(_DIGITS_TO_ZERO):
        try:
            return orjson.loads(data), True
        except orjson.JSONDecodeError:
            pass  # json decides: it reads NaN/Infinity and lone surrogates, and raises its own errors for the rest
    return json.loads(text), False


def canonical_dumps(value: Any) -> str:
    """``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)``.

    ``value`` must be plain JSON data (dicts, lists, strings, numbers, booleans, None) with finite floats only, as
    ingested records are (non-finite numbers are rejected as E7110): orjson writes NaN as ``null`` and writes datetimes,
    enums, UUIDs and dataclasses natively where ``default=str`` would not.
    """
    try:
        out = orjson.dumps(value, option=_SORTED)
    except TypeError:
        out = None  # non-JSON types (``default=str``), non-string keys, integers beyond 64 bits
    # orjson writes floats outside [1e-4, 1e16) as "1e16"/"1e-7"/"0.00001", repr as "1e+16"/"1e-07"/"1e-05": any
    # digit followed by "e", or "0.0000", sends the value to json (inside a string that only costs the fallback).
    if out is None or b"0.0000" in out or b"0e" in out.translate(_DIGITS_TO_ZERO):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return out.decode("utf-8")


_CONTAINERS = (dict, list, tuple)


def too_deep(value: Any, limit: int) -> bool:
    """Whether ``value`` nests dicts/lists more than ``limit`` levels (the top object is level 1).

    Iterative, so a hostile depth cannot exhaust the interpreter's stack; depth-first and stopped at ``limit``, so a
    cyclic structure handed in-process is "too deep" instead of a hang."""
    if not isinstance(value, _CONTAINERS):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, _CONTAINERS):
                stack.append((child, depth + 1))
    return False


def brackets(text: str | bytes) -> int:
    """Opening brackets in JSON text: an upper bound of its nesting depth (those inside strings count too)."""
    if isinstance(text, str):
        return text.count("{") + text.count("[")
    return text.count(b"{") + text.count(b"[")
