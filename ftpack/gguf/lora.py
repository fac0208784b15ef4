"""LoRA/DoRA maths: load a PEFT adapter, and compute one merged weight, row chunk by row chunk.

The merged weight is PEFT's ``merge_and_unload`` in fp32: ``W + scaling * B @ A`` (with
rsLoRA, rank/alpha patterns, biases, embeddings and fan-in-fan-out layouts), rescaled per
output row to the learned magnitude for DoRA. Everything is row-separable except DoRA on
a transposed layout, so big tensors are processed in chunks of about :data:`CHUNK_BYTES`.
Used by ``ftpack merge`` (a merged folder) and ``ftpack convert --adapter`` (merged on
the fly while the GGUF is written).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ftpack.core.errors import FtpackError, bad_input
from ftpack.gguf.safetensors_io import FLOAT_DTYPES, TensorSource, numel

#: rows of a tensor processed at once: about this many float32 bytes per chunk
CHUNK_BYTES = 16 << 20
ADAPTER_PREFIX = "base_model.model."


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
    source = TensorSource(folder, [weights])

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
    per_row = max(numel(shape[1:]) if shape else 1, 1)
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
