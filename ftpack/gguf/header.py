"""A GGUF file's header (metadata scalars and tensor index) read fast, without the tensor data.

gguf-py's ``GGUFReader`` turns every array element into a numpy view: for a tokenizer of
49k tokens that takes ~5 s, for Llama 3's 128k tokens and 280k merges far longer. Code
that only needs a few scalars and the tensor shapes (the Ollama store writer's config
blob, the LoRA writer's check against a base) skips arrays by their byte length here
instead: milliseconds. Layout (GGUF v2/v3, little-endian): magic, version, tensor count,
KV count; KV pairs (key string, value type, value); tensor infos (name, n_dims, dims,
type, offset).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftpack.core.errors import FtpackError

#: GGUF value types: (name, struct format) of the fixed-size ones.
_SCALARS = {0: ("UINT8", "<B"), 1: ("INT8", "<b"), 2: ("UINT16", "<H"), 3: ("INT16", "<h"), 4: ("UINT32", "<I"),
            5: ("INT32", "<i"), 6: ("FLOAT32", "<f"), 7: ("BOOL", "<?"), 10: ("UINT64", "<Q"), 11: ("INT64", "<q"),
            12: ("FLOAT64", "<d")}
_STRING, _ARRAY = 8, 9
#: Arrays up to this many items are always read (per-layer head counts, tags); longer ones
#: (vocabularies, merges) only when asked for.
SMALL_ARRAY = 4096


@dataclass
class GGUFHeader:
    """Scalar metadata (``{key: (type name, value)}``), arrays (``{key: list}``: the short ones
    and those asked for; the others are skipped) and the tensor index: ``{tensor: ggml ne}``, ``{tensor: ggml
    type}``, ``{tensor: offset}`` (from :attr:`data_start`, the aligned end of the header)."""

    version: int
    scalars: dict[str, tuple[str, Any]] = field(default_factory=dict)
    tensors: dict[str, tuple[int, ...]] = field(default_factory=dict)
    arrays: dict[str, list[Any]] = field(default_factory=dict)
    tensor_types: dict[str, int] = field(default_factory=dict)
    tensor_offsets: dict[str, int] = field(default_factory=dict)
    data_start: int = 0

    def get(self, key: str, type_name: str | None = None) -> Any:
        """The value of ``key``; None when absent or (with ``type_name``) of another type."""
        found = self.scalars.get(key)
        if found is None or (type_name is not None and found[0] != type_name):
            return None
        return found[1]

    def value(self, key: str) -> Any:
        """A scalar's value or an array read (a list); None when absent."""
        found = self.scalars.get(key)
        return found[1] if found is not None else self.arrays.get(key)

    @property
    def parameter_count(self) -> int:
        total = 0
        for shape in self.tensors.values():
            n = 1
            for d in shape:
                n *= d
            total += n
        return total


def read_gguf_header(path: str | Path, arrays: tuple[str, ...] = ()) -> GGUFHeader:
    """Read the header of the GGUF at ``path``, with the values of the ``arrays`` keys (e.g.
    ``tokenizer.ggml.tokens``: 49k strings in ~20 ms); an :class:`FtpackError` for
    anything else."""
    import mmap

    path = Path(path)
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return _parse(mm, frozenset(arrays))
    except (OSError, ValueError, struct.error, UnicodeDecodeError, IndexError) as exc:
        raise FtpackError(f"{path} is not a readable GGUF file ({exc}).") from None


def _parse(buf, wanted: frozenset[str] = frozenset()) -> GGUFHeader:
    if buf[:4] != b"GGUF":
        raise ValueError("no GGUF magic")
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    if version < 2:
        raise ValueError(f"GGUF version {version} is not supported")
    pos = 24
    header = GGUFHeader(version)

    def string(at: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", buf, at)
        return bytes(buf[at + 8:at + 8 + n]).decode("utf-8"), at + 8 + n

    for _ in range(n_kv):
        key, pos = string(pos)
        (vtype,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        if vtype == _STRING:
            value, pos = string(pos)
            header.scalars[key] = ("STRING", value)
        elif vtype == _ARRAY:
            item, count = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            values: list[Any] | None = [] if key in wanted or count <= SMALL_ARRAY else None
            if item == _STRING:
                for _ in range(count):
                    (n,) = struct.unpack_from("<Q", buf, pos)
                    if values is not None:
                        values.append(bytes(buf[pos + 8:pos + 8 + n]).decode("utf-8", errors="replace"))
                    pos += 8 + n
            elif item in _SCALARS:
                fmt = _SCALARS[item][1]
                if values is not None:
                    values.extend(struct.unpack_from(f"<{count}{fmt[1:]}", buf, pos))
                pos += count * struct.calcsize(fmt)
            else:  # arrays of arrays: no GGUF writer produces them for the keys read here
                raise ValueError(f"nested array at {key}")
            if values is not None:
                header.arrays[key] = values
        elif vtype in _SCALARS:
            name, fmt = _SCALARS[vtype]
            header.scalars[key] = (name, struct.unpack_from(fmt, buf, pos)[0])
            pos += struct.calcsize(fmt)
        else:
            raise ValueError(f"unknown value type {vtype} at {key}")
    for _ in range(n_tensors):
        name, pos = string(pos)
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
        pos += 4 + 8 * n_dims
        ggml_type, offset = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        header.tensors[name] = tuple(int(d) for d in dims)
        header.tensor_types[name] = int(ggml_type)
        header.tensor_offsets[name] = int(offset)
    alignment = header.get("general.alignment", "UINT32") or 32
    header.data_start = -(-pos // alignment) * alignment
    return header
