"""Go's ``encoding/json``, byte for byte: the JSON Ollama writes into its store.

Ollama's create writes the params, messages and config blobs and the manifest with
``json.Marshal`` / ``json.Encoder``; their sha256 digests name the blobs, so an offline
store write must produce the same bytes: compact, HTML characters escaped (``<`` ->
``\\u003c``), floats in strconv's shortest form, and request numbers decoded as
float64 (``2048`` stays ``2048``, ``0.7`` stays ``0.7``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

_GO_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _go_str(s: str) -> str:
    parts = []
    for ch in s:
        if ch in _GO_ESCAPES:
            parts.append(_GO_ESCAPES[ch])
        elif ord(ch) < 0x20 or ch in "<>&\u2028\u2029":  # json.Encoder escapes HTML by default
            parts.append("\\u%04x" % ord(ch))
        elif 0xD800 <= ord(ch) <= 0xDFFF:
            parts.append("\\ufffd")
        else:
            parts.append(ch)
    return '"' + "".join(parts) + '"'


def _go_float(f: float) -> str:
    """strconv 'f'/-1 layout, or 'e' (cleaned exponent) outside [1e-6, 1e21), as encoding/json."""
    if f == 0:
        return "-0" if str(f).startswith("-") else "0"  # strconv keeps the sign of -0
    d = Decimal(repr(f)).normalize()
    sign, digits, exp = d.as_tuple()
    ds = "".join(map(str, digits))
    lead = exp + len(ds)  # position of the decimal point relative to the digit string
    neg = "-" if sign else ""
    if 1e-6 <= abs(f) < 1e21:
        if lead <= 0:
            return f"{neg}0.{'0' * -lead}{ds}"
        if lead >= len(ds):
            return f"{neg}{ds}{'0' * (lead - len(ds))}"
        return f"{neg}{ds[:lead]}.{ds[lead:]}"
    e = lead - 1
    mant = ds[0] + (f".{ds[1:]}" if len(ds) > 1 else "")
    return f"{neg}{mant}e{'-' if e < 0 else '+'}{abs(e) if e < 0 and abs(e) < 10 else f'{abs(e):02d}'}"


def go_json(value: Any, *, sort_keys: bool = False) -> str:
    """Compact JSON exactly as Go's json.Marshal writes it (maps: ``sort_keys``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, str):
        return _go_str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(go_json(v, sort_keys=sort_keys) for v in value) + "]"
    if isinstance(value, dict):
        items = sorted(value.items()) if sort_keys else list(value.items())
        return "{" + ",".join(_go_str(k) + ":" + go_json(v, sort_keys=sort_keys) for k, v in items) + "}"
    raise TypeError(f"go_json: cannot encode {type(value).__name__}")


def as_go_decoded(value: Any) -> Any:
    """A request value as the server's map[string]any decoding holds it (numbers: float64)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [as_go_decoded(v) for v in value]
    if isinstance(value, dict):
        return {k: as_go_decoded(v) for k, v in value.items()}
    return value
