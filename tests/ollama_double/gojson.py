"""Go's ``encoding/json`` output, byte for byte (what Ollama writes into its store).

Written independently of ftpack's own encoder so that a test comparing the double's
store with ftpack's offline store compares two implementations, not one with itself.
Rules (Go >= 1.22): ``<``, ``>``, ``&``, U+2028, U+2029 escaped as ``\\u00XX``/``\\u20XX``
(SetEscapeHTML is on by default); control characters as ``\\n \\r \\t \\b \\f`` or
``\\u00xx``; non-ASCII kept as UTF-8; float64 in shortest form, ``'f'`` layout unless
the magnitude is < 1e-6 or >= 1e21 (then ``1e-07`` is cleaned to ``1e-7``); maps with
sorted keys, structs in field order (here: dict insertion order).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any


def go_string(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        elif o < 0x20 or ch in "<>&\u2028\u2029":
            out.append(f"\\u{o:04x}")
        elif 0xD800 <= o <= 0xDFFF:
            out.append("\\ufffd")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def go_float(f: float) -> str:
    if f != f or f in (float("inf"), float("-inf")):
        raise ValueError("Go's json refuses NaN and Inf")
    if f == 0:
        return "-0" if str(f).startswith("-") else "0"
    sign, digits, exp = Decimal(repr(f)).as_tuple()
    ds = "".join(map(str, digits)).rstrip("0") or "0"
    exp10 = exp + len("".join(map(str, digits))) - 1  # exponent of the first digit
    neg = "-" if sign else ""
    if 1e-6 <= abs(f) < 1e21:
        point = exp10 + 1  # digits before the decimal point
        if point <= 0:
            return f"{neg}0.{'0' * -point}{ds}"
        if point >= len(ds):
            return f"{neg}{ds}{'0' * (point - len(ds))}"
        return f"{neg}{ds[:point]}.{ds[point:]}"
    mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
    e = f"{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"
    if e.startswith("-0"):
        e = "-" + e[2:]
    return f"{neg}{mant}e{e}"


def go_json(v: Any, *, sort_keys: bool = False) -> str:
    """Compact Go JSON; ``sort_keys`` for Go maps (structs keep their field order)."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return go_float(v)
    if isinstance(v, str):
        return go_string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(go_json(x, sort_keys=sort_keys) for x in v) + "]"
    if isinstance(v, dict):
        items = sorted(v.items()) if sort_keys else v.items()
        return "{" + ",".join(f"{go_string(k)}:{go_json(x, sort_keys=sort_keys)}" for k, x in items) + "}"
    raise TypeError(f"cannot encode {type(v).__name__}")
