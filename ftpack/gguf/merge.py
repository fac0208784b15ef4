"""Fold a LoRA/DoRA adapter into a 16-bit copy of its base, one tensor at a time.

Why streaming: ``PeftModel.merge_and_unload()`` needs the whole model in memory (and
users run out of it); here each base tensor is read from its safetensors file, the
adapter's delta is added in fp32, and the result is written straight out, so peak
memory is about one tensor plus the (small) adapter. The base weights are always the
16-bit (or 32-bit) originals on disk — an adapter trained with QLoRA is folded into
those, never into 4-bit weights.

The same pieces (:class:`TensorSource`, :class:`LoraAdapter`, :func:`fill_tensor`) feed
``ftpack convert --adapter``, which merges on the fly while writing the GGUF.

Why numpy and not torch: importing torch alone costs ~0.5 GB of RSS (CUDA build), more
than the merge itself needs. All math here is numpy float32 (bf16 via bit shifts), and
tensors are processed in row chunks into one preallocated output array, so the peak is
about one *output* tensor plus a few MB, whatever the model size.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import re
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ftpack.core.atomic import atomic_dir, check_free_space, human_bytes
from ftpack.core.errors import FtpackError, bad_input
from ftpack.core.report import get_reporter

#: safetensors dtype names -> numpy storage dtype (bf16 is stored as its raw uint16 bits)
ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
             "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
#: rows of a tensor processed at once: about this many float32 bytes per chunk
CHUNK_BYTES = 16 << 20
ST_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
MERGE_DTYPES = {"bf16": "BF16", "f16": "F16", "f32": "F32"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json")
ADAPTER_PREFIX = "base_model.model."


# -- reading safetensors one tensor at a time -------------------------------------------

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


class TensorSource:
    """The tensors of a Hugging Face model folder, read one at a time from disk.

    Reads with plain file I/O (no mmap), so a tensor's bytes leave memory when it is
    dropped: converting a 7B model does not grow the process to 14 GB of mapped pages.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.shards = safetensors_files(self.folder)
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
        per_row = _numel(e.shape[1:]) if e.shape else 1
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
        raise bad_input(f"{folder} has only pickle weights (pytorch_model*.bin).",
                        "Re-save it as safetensors: AutoModelForCausalLM.from_pretrained(dir)"
                        ".save_pretrained(out, safe_serialization=True).")
    if (folder / "adapter_config.json").is_file():
        raise bad_input(f"{folder} is a PEFT adapter, not a full model.",
                        "Pass the base model folder and the adapter with --adapter.")
    raise bad_input(f"No model weights (*.safetensors) in {folder}.")


def load_hf_config(folder: Path) -> dict[str, Any]:
    """config.json of a Hugging Face model folder, with clear errors."""
    folder = Path(folder)
    path = folder / "config.json"
    if not folder.is_dir():
        raise bad_input(f"Model folder not found: {folder}")
    if not path.is_file():
        hint = ("This is a PEFT adapter folder: pass its base model and --adapter."
                if (folder / "adapter_config.json").is_file() else
                "Point to a Hugging Face model folder (config.json + *.safetensors + tokenizer files).")
        raise bad_input(f"{folder} has no config.json, so it is not a Hugging Face model folder.", hint)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise bad_input(f"{path} is not valid JSON ({exc}).") from None
    if not isinstance(config, dict):
        raise bad_input(f"{path} does not hold a JSON object.")
    return config


# -- the adapter ------------------------------------------------------------------------

@dataclass
class LoraModule:
    """One adapted module: its low-rank factors and how to scale them."""

    module: str  # e.g. model.layers.0.self_attn.q_proj
    scaling: float
    a: "np.ndarray | None" = None
    b: "np.ndarray | None" = None
    magnitude: "np.ndarray | None" = None  # DoRA
    bias: "np.ndarray | None" = None  # lora_bias=True
    embedding: bool = False  # lora_embedding_A/B (nn.Embedding)
    fan_in_fan_out: bool = False


@dataclass
class LoraAdapter:
    """A PEFT LoRA/DoRA adapter folder loaded for merging (it is small: rank r)."""

    folder: Path
    config: dict[str, Any]
    modules: dict[str, LoraModule] = field(default_factory=dict)
    replacements: dict[str, np.ndarray] = field(default_factory=dict)  # modules_to_save
    used: set[str] = field(default_factory=set)

    @property
    def base_model_name_or_path(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    @property
    def use_dora(self) -> bool:
        return bool(self.config.get("use_dora"))

    def weight_for(self, name: str) -> tuple[LoraModule | None, "np.ndarray | None"]:
        """(LoRA factors, full replacement) that apply to base tensor ``name``."""
        if name in self.replacements:
            self.used.add(name)
            return None, self.replacements[name]
        for suffix in (".weight", ".bias"):
            if name.endswith(suffix):
                module = name[: -len(suffix)]
                if module in self.modules:
                    self.used.add(module if suffix == ".weight" else module + ".bias")
                    return self.modules[module], None
        return None, None

    def check_all_used(self, base: Path) -> None:
        """An adapter module with no base tensor means the adapter is for another model."""
        unused = [m for m in self.modules if m not in self.used]
        unused += [n for n in self.replacements if n not in self.used]
        if unused:
            raise bad_input(
                f"The adapter {self.folder} does not fit the base model {base}: it adapts "
                f"{len(unused)} module(s) the base does not have, e.g. {unused[0]}.",
                f"It was trained on {self.base_model_name_or_path!r}; pass that base model.")


def load_adapter(folder: Path) -> LoraAdapter:
    """Read adapter_config.json + adapter_model.safetensors; refuse what is not LoRA."""
    folder = Path(folder)
    cfg_path = folder / "adapter_config.json"
    if not cfg_path.is_file():
        raise bad_input(f"{folder} is not a PEFT adapter folder (no adapter_config.json).")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise bad_input(f"{cfg_path} is not valid JSON ({exc}).") from None
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise bad_input(f"{folder} is a {peft_type} adapter; ftpack merges LoRA and DoRA adapters only.")
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        if (folder / "adapter_model.bin").is_file():
            raise bad_input(f"{folder} holds the adapter as pickle (adapter_model.bin).",
                            "Re-save it with safe_serialization=True.")
        raise bad_input(f"{folder} has no adapter_model.safetensors.")
    for unsupported in ("layer_replication", "trainable_token_indices", "target_parameters"):
        if config.get(unsupported):
            raise bad_input(f"{folder}: adapters using {unsupported} cannot be merged by ftpack.",
                            "Merge with PEFT's merge_and_unload() instead.")
    source = TensorSource.__new__(TensorSource)
    source.folder, source.shards = folder, [weights]
    source.entries, _ = read_safetensors_header(weights)

    r_default = int(config.get("r", 8))
    alpha_default = float(config.get("lora_alpha", r_default))
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    use_rslora = bool(config.get("use_rslora"))
    adapter = LoraAdapter(folder, config)

    def scaling_for(module: str) -> float:
        r = int(_pattern_value(rank_pattern, module, r_default))
        alpha = float(_pattern_value(alpha_pattern, module, alpha_default))
        return alpha / (r ** 0.5) if use_rslora else alpha / r

    part_re = re.compile(r"^(?P<module>.+?)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B|"
                         r"lora_magnitude_vector)(?:\.(?!weight$|bias$)[A-Za-z0-9_]+)?(?P<suffix>\.weight|\.bias)?$")
    for key in source.names():
        name = key[len(ADAPTER_PREFIX):] if key.startswith(ADAPTER_PREFIX) else key
        tensor = source.read(key).astype(np.float32, copy=False)
        m = part_re.match(name)
        if m is None:
            # a fully trained module (modules_to_save): it replaces the base tensor
            adapter.replacements[name.replace(".modules_to_save", "")] = tensor
            continue
        module, part = m.group("module"), m.group("part")
        lm = adapter.modules.get(module)
        if lm is None:
            lm = adapter.modules[module] = LoraModule(module, scaling_for(module),
                                                      fan_in_fan_out=bool(config.get("fan_in_fan_out")))
        if part in ("lora_A", "lora_embedding_A"):
            lm.a = tensor
            lm.embedding = part == "lora_embedding_A"
        elif part in ("lora_B", "lora_embedding_B"):
            if m.group("suffix") == ".bias":
                lm.bias = tensor
            else:
                lm.b = tensor
        else:
            lm.magnitude = tensor
    for lm in adapter.modules.values():
        if lm.a is None or lm.b is None:
            raise bad_input(f"{folder}: module {lm.module} lacks its lora_A or lora_B tensor; "
                            "the adapter file is incomplete.")
    return adapter


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern/alpha_pattern lookup: a key matches a module-name suffix."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _delta_is_transposed(lm: LoraModule) -> bool:
    """Whether the stored weight is (B @ A).T: embeddings store (num, dim), Conv1D (in, out)."""
    return lm.embedding != lm.fan_in_fan_out


def lora_delta_rows(lm: LoraModule, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of the fp32 delta ``scaling * B @ A`` in the base weight's layout."""
    if _delta_is_transposed(lm):
        delta = lm.a[:, start:stop].T @ lm.b.T
    else:
        delta = lm.b[start:stop] @ lm.a
    delta *= np.float32(lm.scaling)
    return delta


def check_lora_shape(name: str, shape: tuple[int, ...], lm: LoraModule) -> None:
    """The adapter's factors must produce exactly the base weight's shape."""
    got_out = lm.b.shape[0] if not lm.embedding else lm.a.shape[1]
    got_in = lm.a.shape[1] if not lm.embedding else lm.b.shape[0]
    got = (got_out, got_in)
    if lm.fan_in_fan_out:
        got = (got_in, got_out)
    if len(shape) != 2 or got != tuple(shape):
        raise _shape_error(name, tuple(shape), got)
    if lm.magnitude is not None:
        rows = shape[1] if lm.fan_in_fan_out else shape[0]
        if lm.magnitude.size != rows:
            raise _shape_error(name, tuple(shape), tuple(lm.magnitude.shape))


def merge_rows(name: str, rows: np.ndarray | None, start: int, stop: int, lm: LoraModule | None,
               replacement: np.ndarray | None) -> np.ndarray:
    """Rows ``start:start+len(rows)`` of the merged fp32 tensor (fp32 math, as PEFT does).

    ``rows`` is the float32 base chunk and may be modified in place. LoRA, biases and
    DoRA (whose norm is per output row) are all row-separable; :func:`chunk_rows` gives
    the whole tensor in one chunk where that is not so (DoRA on a transposed layout).
    """
    if replacement is not None:
        return np.array(replacement[start:stop], dtype=np.float32)
    if lm is None:
        return rows
    if name.endswith(".bias"):
        if lm.bias is None:
            return rows
        rows += lm.bias[start:stop] * np.float32(lm.scaling)
        return rows
    rows += lora_delta_rows(lm, start, stop)
    if lm.magnitude is None:
        return rows
    # DoRA: rescale each output row of (W + ΔW) to the learned magnitude
    out_rows = rows.T if lm.fan_in_fan_out else rows
    norm = np.linalg.norm(out_rows, axis=1)
    magnitude = lm.magnitude.reshape(-1)
    if not lm.fan_in_fan_out:
        magnitude = magnitude[start:stop]
    out_rows *= (magnitude / norm).reshape(-1, 1)
    return rows


def chunk_rows(shape: tuple[int, ...], lm: LoraModule | None) -> int:
    """How many rows to process at once: ~CHUNK_BYTES of float32, all of them when the
    merge is not row-separable (DoRA norms over the columns of a transposed layout)."""
    rows = shape[0] if shape else 1
    if lm is not None and lm.magnitude is not None and lm.fan_in_fan_out:
        return max(rows, 1)
    per_row = max(_numel(shape[1:]) if shape else 1, 1)
    return max(1, min(rows, CHUNK_BYTES // (4 * per_row)))


def fill_tensor(source: "TensorSource", name: str, adapter: "LoraAdapter | None", out: np.ndarray,
                convert: Callable[[np.ndarray], np.ndarray]) -> bool:
    """Write tensor ``name`` (merged with the adapter, if any applies) into ``out`` chunk by
    chunk: ``out[rows] = convert(float32 rows)``. Returns whether the adapter touched it.

    Non-float tensors without an adapter change are copied as stored.
    """
    entry = source.entries[name]
    lm, replacement = adapter.weight_for(name) if adapter is not None else (None, None)
    if replacement is not None and tuple(replacement.shape) != entry.shape:
        raise _shape_error(name, entry.shape, tuple(replacement.shape))
    if lm is not None and name.endswith(".bias"):
        if lm.bias is not None and tuple(lm.bias.shape) != entry.shape:
            raise _shape_error(name, entry.shape, tuple(lm.bias.shape))
    elif lm is not None:
        check_lora_shape(name, entry.shape, lm)
    if entry.dtype not in FLOAT_DTYPES and lm is None and replacement is None:
        out[...] = source.read_raw(name).reshape(out.shape)
        return False
    if not entry.shape:  # a scalar
        out[...] = convert(merge_rows(name, source.read(name).reshape(1), 0, 1, lm, replacement).reshape(()))
        return lm is not None or replacement is not None
    rows = entry.shape[0]
    step = chunk_rows(entry.shape, lm)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        chunk = None if replacement is not None else source.read(name, start, stop)
        merged = merge_rows(name, chunk, start, stop, lm, replacement)
        out[start:stop] = convert(merged)
        del chunk, merged
    return lm is not None or replacement is not None


def _shape_error(name: str, base: tuple[int, ...], adapter: tuple[int, ...]) -> FtpackError:
    return bad_input(f"The adapter does not fit the base model: {name} is {list(base)} in the base "
                     f"but {list(adapter)} in the adapter.",
                     "The adapter was trained on another base model; pass the base it was trained on.")


def resolve_adapter_base(adapter: LoraAdapter, base: Path | str | None) -> Path:
    """The base model folder: the one given, else adapter_config's base_model_name_or_path."""
    if base is not None:
        return Path(base)
    recorded = adapter.base_model_name_or_path
    if recorded and Path(recorded).expanduser().is_dir():
        return Path(recorded).expanduser()
    try:
        from ftpack.training.bases import resolve_base

        return Path(resolve_base(recorded).path) if recorded else _no_base(adapter)
    except FtpackError:
        raise
    except Exception:  # pragma: no cover - models.py is another helper's module
        return _no_base(adapter)


def _no_base(adapter: LoraAdapter) -> Path:
    raise bad_input(f"Cannot find the base model of the adapter {adapter.folder} "
                    f"(adapter_config.json says {adapter.base_model_name_or_path!r}).",
                    "Pass the base model folder with --base.")


# -- writing safetensors one tensor at a time ---------------------------------------------

class StreamingSafetensorsWriter:
    """Writes a .safetensors file whose header is known up front, then tensor by tensor."""

    def __init__(self, path: Path, plan: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str]):
        header: dict[str, Any] = {"__metadata__": metadata}
        offset = 0
        self._order: list[tuple[str, int]] = []
        for name, dtype, shape in plan:
            n = ST_ITEMSIZE[dtype]
            for d in shape:
                n *= d
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
            self._order.append((name, n))
            offset += n
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self._fh = open(path, "wb")
        self._fh.write(struct.pack("<Q", len(blob)))
        self._fh.write(blob)
        self._next = 0

    def write(self, name: str, array: np.ndarray) -> None:
        expected_name, nbytes = self._order[self._next]
        assert name == expected_name, (name, expected_name)
        assert array.nbytes == nbytes, (name, array.nbytes, nbytes)
        if nbytes:
            self._fh.write(memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8)))
        self._next += 1

    def close(self) -> None:
        assert self._next == len(self._order), "not every planned tensor was written"
        self._fh.close()


@dataclass
class MergeResult:
    out_dir: Path
    tensors: int
    merged_modules: int
    bytes: int
    dtype: str


def merge_adapter(base: Path | str | None, adapter_dir: Path | str, out_dir: Path | str,
                  dtype: str = "auto") -> MergeResult:
    """Write base + adapter as a merged Hugging Face folder (sharded like the base).

    ``dtype``: ``auto`` keeps each tensor's stored dtype (a 16-bit base stays 16-bit);
    ``bf16``/``f16``/``f32`` cast floating-point tensors.
    """
    reporter = get_reporter()
    if dtype not in ("auto", *MERGE_DTYPES):
        raise bad_input(f"--dtype {dtype!r} is not one of: auto, {', '.join(MERGE_DTYPES)}.")
    adapter = load_adapter(Path(adapter_dir))
    base_dir = resolve_adapter_base(adapter, base)
    config = load_hf_config(base_dir)
    source = TensorSource(base_dir)
    out_dir = Path(out_dir)
    if out_dir.resolve() in (base_dir.resolve(), Path(adapter_dir).resolve()):
        raise bad_input("The output folder must differ from the base and adapter folders.")

    def out_dtype(entry: TensorEntry) -> str:
        if dtype == "auto" or entry.dtype not in ("F32", "F16", "BF16", "F64"):
            return entry.dtype
        return MERGE_DTYPES[dtype]

    plans: dict[Path, list[tuple[str, str, tuple[int, ...]]]] = {}
    for entry in source.entries.values():
        plans.setdefault(entry.file, []).append((entry.name, out_dtype(entry), entry.shape))
    needed = sum(ST_ITEMSIZE[d] * _numel(s) for plan in plans.values() for _, d, s in plan)
    check_free_space(out_dir.parent, needed + (64 << 20), "the merged model")

    merged_modules = 0
    n_files = len(plans)
    shard_names = ([f"model-{i + 1:05d}-of-{n_files:05d}.safetensors" for i in range(n_files)]
                   if n_files > 1 else ["model.safetensors"])
    weight_map: dict[str, str] = {}
    with atomic_dir(out_dir) as tmp, reporter.progress("merging", total=len(source.entries), unit="tensors") as bar:
        for shard_name, (src_file, plan) in zip(shard_names, plans.items()):
            writer = StreamingSafetensorsWriter(tmp / shard_name, plan, {"format": "pt"})
            try:
                for name, st_dtype, shape in plan:
                    out = np.empty(shape, dtype=ST_DTYPES[st_dtype])
                    merged_modules += fill_tensor(source, name, adapter, out,
                                                  lambda rows, d=st_dtype: from_float32(rows, d))
                    writer.write(name, out)
                    weight_map[name] = shard_name
                    del out
                    release_memory()
                    bar.advance(1)
            finally:
                writer._fh.close()
            writer.close()
        adapter.check_all_used(base_dir)
        if n_files > 1:
            (tmp / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": needed}, "weight_map": weight_map}, indent=2), encoding="utf-8")
        _write_config(tmp, config, dtype, source)
        copy_tokenizer_files(tmp, base_dir, Path(adapter_dir))
    result = MergeResult(out_dir, len(source.entries), merged_modules, needed,
                         dtype if dtype != "auto" else _dominant_dtype(source))
    reporter.info(f"Merged {merged_modules} tensors from {adapter_dir} into {out_dir} "
                  f"({human_bytes(needed)}, {result.dtype}).")
    return result


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _dominant_dtype(source: TensorSource) -> str:
    counts: dict[str, int] = {}
    for e in source.entries.values():
        counts[e.dtype] = counts.get(e.dtype, 0) + e.nbytes
    st = max(counts, key=counts.get) if counts else "F32"
    return {"F32": "f32", "F16": "f16", "BF16": "bf16"}.get(st, st.lower())


def _write_config(out: Path, config: dict[str, Any], dtype: str, source: TensorSource) -> None:
    config = dict(config)
    config.pop("quantization_config", None)  # the merged copy is plain 16/32-bit weights
    torch_name = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[
        dtype if dtype != "auto" else _dominant_dtype(source) if _dominant_dtype(source) in ("f32", "f16", "bf16")
        else "f32"]
    for key in ("torch_dtype", "dtype"):
        if key in config:
            config[key] = torch_name
    if "torch_dtype" not in config and "dtype" not in config:
        config["dtype"] = torch_name
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    gen = source.folder / "generation_config.json"
    if gen.is_file():
        shutil.copy2(gen, out / gen.name)


def copy_tokenizer_files(out: Path, base_dir: Path, adapter_dir: Path | None) -> None:
    """Tokenizer from the adapter folder when training saved one (it carries the training
    chat template), else from the base."""
    source = tokenizer_dir(base_dir, adapter_dir)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)


def tokenizer_dir(base_dir: Path, adapter_dir: Path | None) -> Path:
    """Where the tokenizer to ship lives: the adapter folder if it has one, else the base."""
    if adapter_dir is not None and any((Path(adapter_dir) / n).is_file()
                                       for n in ("tokenizer.json", "tokenizer.model")):
        return Path(adapter_dir)
    return Path(base_dir)


# -- the pipeline stage -------------------------------------------------------------------

def train_output(ctx) -> tuple[Path, Path | None]:
    """(model folder, adapter folder or None) from the train stage's record."""
    rec = ctx.upstream("train")
    main = ctx.upstream_path("train")
    if (main / "adapter_config.json").is_file():
        base = rec.metrics.get("base_path")
        adapter = load_adapter(main)
        base_dir = resolve_adapter_base(adapter, base)
        return base_dir, main
    return main, None


def run_merge_stage(ctx) -> "Any":
    """Stage ``merge``: reads train/adapter (+ its base) and writes merged/ (HF folder).

    Only needed when a merged Hugging Face folder is wanted; ``convert`` fuses the
    adapter on the fly without it. Full fine-tunes (train/model) need no merge: the
    stage then records train/model as its output unchanged.
    """
    from ftpack.core.runner import StageResult

    base_dir, adapter_dir = train_output(ctx)
    if adapter_dir is None:
        return StageResult(outputs=[], main_output=base_dir, metrics={"merged": False})
    out = ctx.build_dir / "merged"
    result = merge_adapter(base_dir, adapter_dir, out, dtype="auto")
    return StageResult(outputs=[out], main_output=out,
                       metrics={"merged": True, "merged_tensors": result.merged_modules,
                                "dtype": result.dtype, "base_path": str(base_dir)})
