"""Safetensors files read and written one tensor at a time, with numpy only.

Why: a 7B model is 14 GB; merge and convert must never hold more than one tensor. The
reader parses a file's header (8-byte length + JSON) and reads a tensor's rows with
plain file I/O on demand; the writer takes the header up front and the tensors in that
order, under a temporary name that becomes the real one only when every tensor is in.

Why numpy and not torch: importing torch alone costs ~0.5 GB of RSS. bf16 is handled as
its raw uint16 bits (bit shifts), bit-identical to torch's rounding.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftpack.core.atomic import partial_name
from ftpack.core.errors import FtpackError, bad_input

#: safetensors dtype names -> numpy storage dtype (bf16 is stored as its raw uint16 bits)
ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
             "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
ST_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
#: safetensors' own dtype order; its files hold tensors by this order (descending), then by name
ST_DTYPE_ORDER = ("BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64")


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# -- reading ------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: file, dtype, shape and byte range (no data loaded)."""

    name: str
    file: Path
    dtype: str  # safetensors name: F32, BF16, ...
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """Parse a .safetensors header (8-byte length + JSON) without touching the data."""
    try:
        with open(path, "rb") as fh:
            raw_len = fh.read(8)
            if len(raw_len) != 8:
                raise ValueError("file shorter than its header")
            (n,) = struct.unpack("<Q", raw_len)
            if n > 100_000_000:
                raise ValueError("header length is implausible")
            header = json.loads(fh.read(n))
            size = path.stat().st_size
    except (OSError, ValueError) as exc:
        raise FtpackError(f"{path} is not a readable safetensors file ({exc}).",
                          "Re-download or re-save the model.") from None
    meta = header.pop("__metadata__", None) or {}
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        entry = TensorEntry(name, path, info["dtype"], tuple(info["shape"]), 8 + n + begin, 8 + n + end)
        if entry.end > size:
            raise FtpackError(f"{path} is truncated: tensor {name} ends past the end of the file.",
                              "Re-download or re-save the model.")
        entries[name] = entry
    return entries, meta


def safetensors_files(folder: Path) -> list[Path]:
    """The model's safetensors files in index order; a clear error for anything else."""
    folder = Path(folder)
    if not folder.is_dir():
        raise bad_input(f"Model folder not found: {folder}")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError) as exc:
            raise FtpackError(f"{index} is damaged ({exc}).", "Re-download or re-save the model.") from None
        files = list(dict.fromkeys(weight_map.values()))
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise FtpackError(f"{folder} is incomplete: missing {', '.join(missing)}.",
                              "Re-download the model (all shards listed in model.safetensors.index.json).")
        return [folder / f for f in files]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    others = sorted(folder.glob("*.safetensors"))
    if others and not (folder / "adapter_model.safetensors").is_file():
        return others
    if (folder / "pytorch_model.bin").is_file() or list(folder.glob("pytorch_model-*.bin")):
        raise bad_input(f"{folder} has only PyTorch .bin weights.",
                        "Convert them first: ftpack.gguf.bin_weights.ensure_safetensors(folder) "
                        "(ftpack convert and ftpack merge do this for you).")
    if (folder / "adapter_config.json").is_file():
        raise bad_input(f"{folder} is a PEFT adapter, not a full model.",
                        "Pass the base model folder and the adapter with --adapter.")
    raise bad_input(f"No model weights (*.safetensors) in {folder}.")


class TensorSource:
    """The tensors of safetensors files (a model folder's shards), read one at a time.

    Reads with plain file I/O (no mmap), so a tensor's bytes leave memory when it is
    dropped: converting a 7B model does not grow the process to 14 GB of mapped pages.
    """

    def __init__(self, folder: Path, files: list[Path] | None = None):
        self.folder = Path(folder)
        self.shards = list(files) if files is not None else safetensors_files(self.folder)
        self.entries: dict[str, TensorEntry] = {}
        for shard in self.shards:
            entries, _ = read_safetensors_header(shard)
            self.entries.update(entries)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return list(self.entries)

    def read_raw(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` of a tensor in its stored dtype (bf16 as uint16 bits).

        Read straight into a fresh array with ``readinto`` (one copy, no mmap)."""
        e = self.entries[name]
        rows = e.shape[0] if e.shape else 1
        stop = rows if stop is None else min(stop, rows)
        per_row = numel(e.shape[1:]) if e.shape else 1
        out = np.empty(((stop - start),) + tuple(e.shape[1:]) if e.shape else (), dtype=ST_DTYPES[e.dtype])
        if out.size == 0:
            return out
        with open(e.file, "rb") as fh:
            fh.seek(e.start + start * per_row * ST_ITEMSIZE[e.dtype])
            if fh.readinto(out.reshape(-1).view(np.uint8)) != out.nbytes:
                raise FtpackError(f"{e.file} is truncated (tensor {name}).", "Re-download or re-save the model.")
        return out

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` as float32 (floating-point tensors) or as stored (others)."""
        e = self.entries[name]
        raw = self.read_raw(name, start, stop)
        return to_float32(raw, e.dtype) if e.dtype in FLOAT_DTYPES else raw

    @property
    def total_bytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values())


# -- dtypes -------------------------------------------------------------------------------

def to_float32(raw: np.ndarray, st_dtype: str) -> np.ndarray:
    """Stored floating-point data -> float32 (bf16: the 16 bits become the high half)."""
    if st_dtype == "BF16":
        wide = raw.astype(np.uint32)
        wide <<= 16
        return wide.view(np.float32)
    return raw if raw.dtype == np.float32 else raw.astype(np.float32)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits (uint16), round to nearest even, NaN kept quiet (as torch does)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    bits = x.view(np.uint32)
    rounded = bits >> 16
    rounded &= 1
    rounded += 0x7FFF
    rounded += bits
    rounded >>= 16
    out = rounded.astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = 0x7FC0
    return out


def from_float32(x: np.ndarray, st_dtype: str) -> np.ndarray:
    """float32 -> the storage dtype of ``st_dtype`` (bf16 as uint16 bits)."""
    if st_dtype == "BF16":
        return f32_to_bf16_bits(x)
    return x.astype(ST_DTYPES[st_dtype], copy=False)


def release_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise); no-op elsewhere."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC: Any = None


# -- writing ------------------------------------------------------------------------------

#: one planned tensor of a file: (name, safetensors dtype, shape)
PlannedTensor = tuple[str, str, tuple[int, ...]]


def safetensors_order(plan: list[PlannedTensor]) -> list[PlannedTensor]:
    """The order the safetensors library stores tensors in (dtype, largest first, then
    name), so a file written here matches one written by ``safetensors`` byte for byte."""
    rank = {d: i for i, d in enumerate(ST_DTYPE_ORDER)}
    return sorted(plan, key=lambda t: (-rank.get(t[1], -1), t[0]))


class SafetensorsWriter:
    """Writes one .safetensors file tensor by tensor, in the order of its plan.

    The header is written first from ``plan``; :meth:`write` takes each tensor in that
    order and checks its size. The file appears under its real name only when
    :meth:`close` finds every tensor written; on an error (or :meth:`abort`) the
    temporary file is removed. Use it as a context manager::

        with SafetensorsWriter(path, plan, {"format": "pt"}) as w:
            for name, dtype, shape in w.plan:
                w.write(name, array)
    """

    def __init__(self, path: Path, plan: list[PlannedTensor], metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self.plan = list(plan)
        header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
        offset = 0
        self._sizes: list[int] = []
        for name, dtype, shape in self.plan:
            if dtype not in ST_ITEMSIZE:
                raise ValueError(f"unsupported safetensors dtype {dtype} for {name}")
            n = ST_ITEMSIZE[dtype] * numel(shape)
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
            self._sizes.append(n)
            offset += n
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self._tmp = partial_name(self.path)
        self._fh = open(self._tmp, "wb")
        self._next = 0
        try:
            self._fh.write(struct.pack("<Q", len(blob)))
            self._fh.write(blob)
        except BaseException:
            self.abort()
            raise

    @property
    def closed(self) -> bool:
        return self._fh is None

    def write(self, name: str, array: np.ndarray) -> None:
        """Append the next planned tensor (any numpy dtype with the planned byte size)."""
        if self._fh is None:
            raise ValueError(f"{self.path}: the writer is closed")
        if self._next >= len(self.plan):
            raise ValueError(f"{self.path}: {name} is not in the plan (all tensors written)")
        expected = self.plan[self._next][0]
        if name != expected:
            raise ValueError(f"{self.path}: got tensor {name}, the plan expects {expected} next")
        if array.nbytes != self._sizes[self._next]:
            raise ValueError(f"{self.path}: {name} has {array.nbytes} bytes, planned {self._sizes[self._next]}")
        if array.nbytes:
            self._fh.write(memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8)))
        self._next += 1

    def close(self) -> Path:
        """Finish the file: every planned tensor must be written; then it gets its name."""
        if self._fh is None:
            raise ValueError(f"{self.path}: the writer is closed")
        if self._next != len(self.plan):
            missing = self.plan[self._next][0]
            self.abort()
            raise ValueError(f"{self.path}: not every planned tensor was written (next: {missing})")
        fh, self._fh = self._fh, None
        try:
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            fh.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the unfinished file (safe to call more than once)."""
        if self._fh is not None:
            fh, self._fh = self._fh, None
            fh.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "SafetensorsWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self._fh is not None:
            self.close()
