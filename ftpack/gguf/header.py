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


@dataclass
class GGUFHeader:
    """Scalar metadata (``{key: (type name, value)}``; arrays are skipped) and ``{tensor: ggml ne}``."""

    version: int
    scalars: dict[str, tuple[str, Any]] = field(default_factory=dict)
    tensors: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def get(self, key: str, type_name: str | None = None) -> Any:
        """The value of ``key``; None when absent or (with ``type_name``) of another type."""
        found = self.scalars.get(key)
        if found is None or (type_name is not None and found[0] != type_name):
            return None
        return found[1]

    @property
    def parameter_count(self) -> int:
        total = 0
        for shape in self.tensors.values():
            n = 1
            for d in shape:
                n *= d
            total += n
        return total


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """Read the header of the GGUF at ``path``; an :class:`FtpackError` for anything else."""
    import mmap

    path = Path(path)
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return _parse(mm)
    except (OSError, ValueError, struct.error, UnicodeDecodeError, IndexError) as exc:
        raise FtpackError(f"{path} is not a readable GGUF file ({exc}).") from None


def _parse(buf) -> GGUFHeader:
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
            if item == _STRING:
                for _ in range(count):
                    (n,) = struct.unpack_from("<Q", buf, pos)
                    pos += 8 + n
            elif item in _SCALARS:
                pos += count * struct.calcsize(_SCALARS[item][1])
            else:  # arrays of arrays: no GGUF writer produces them for the keys read here
                raise ValueError(f"nested array at {key}")
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
        pos += 4 + 8 * n_dims + 4 + 8  # dims, ggml type, offset
        header.tensors[name] = tuple(int(d) for d in dims)
    return header
