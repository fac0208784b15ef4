"""Fold a LoRA/DoRA adapter into a 16-bit copy of its base, one tensor at a time.

Why streaming: ``PeftModel.merge_and_unload()`` needs the whole model in memory (and
users run out of it); here each base tensor is read from its safetensors file, the
adapter's delta is added in fp32 (:mod:`ftpack.gguf.lora`), and the result is written
straight out (:mod:`ftpack.gguf.safetensors_io`), so peak memory is about one output
tensor plus the (small) adapter, whatever the model size. The base weights are always
the 16-bit (or 32-bit) originals on disk — an adapter trained with QLoRA is folded into
those, never into 4-bit weights. numpy only: no torch import (~0.5 GB of RSS alone).

The output folder is replaced only when it is an earlier ftpack output and the caller
says ``overwrite``; a folder of the user's, or one holding the inputs, is never touched.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftpack.core.atomic import atomic_dir, check_free_space, check_output_dir, human_bytes
from ftpack.core.errors import bad_input
from ftpack.core.report import get_reporter
from ftpack.gguf.hf_folder import copy_tokenizer_files, ensure_safetensors, load_hf_config
from ftpack.gguf.lora import fill_tensor, load_adapter, resolve_adapter_base
from ftpack.gguf.safetensors_io import (FLOAT_DTYPES, ST_DTYPES, ST_ITEMSIZE, PlannedTensor, SafetensorsWriter,
                                        TensorSource, from_float32, numel, release_memory)

MERGE_DTYPES = {"bf16": "BF16", "f16": "F16", "f32": "F32"}


@dataclass
class MergeResult:
    out_dir: Path
    tensors: int
    merged_modules: int
    bytes: int
    dtype: str


def merge_adapter(base: Path | str | None, adapter_dir: Path | str, out_dir: Path | str,
                  dtype: str = "auto", *, overwrite: bool = False, allow_pickle: bool = False) -> MergeResult:
    """Write base + adapter as a merged Hugging Face folder (sharded like the base).

    ``dtype``: ``auto`` keeps each tensor's stored dtype (a 16-bit base stays 16-bit);
    ``bf16``/``f16``/``f32`` cast floating-point tensors. ``overwrite`` replaces an
    earlier ftpack output at ``out_dir``; ``allow_pickle`` lets a base's ``.bin``
    weights that PyTorch's safe loader refuses be unpickled.
    """
    reporter = get_reporter()
    if dtype not in ("auto", *MERGE_DTYPES):
        raise bad_input(f"--dtype {dtype!r} is not one of: auto, {', '.join(MERGE_DTYPES)}.")
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    adapter = load_adapter(adapter_dir)
    base_dir = resolve_adapter_base(adapter, base)
    inputs = (base_dir, adapter_dir)
    check_output_dir(out_dir, overwrite=overwrite, inputs=inputs)  # before any work
    config = load_hf_config(base_dir)
    source = TensorSource(ensure_safetensors(base_dir, allow_pickle=allow_pickle))

    plans: dict[Path, list[PlannedTensor]] = {}
    for entry in source.entries.values():
        st_dtype = MERGE_DTYPES[dtype] if dtype != "auto" and entry.dtype in FLOAT_DTYPES else entry.dtype
        plans.setdefault(entry.file, []).append((entry.name, st_dtype, entry.shape))
    needed = sum(ST_ITEMSIZE[d] * numel(s) for plan in plans.values() for _, d, s in plan)
    check_free_space(out_dir.parent, needed + (64 << 20), "the merged model")

    merged_modules = 0
    n_files = len(plans)
    shard_names = ([f"model-{i + 1:05d}-of-{n_files:05d}.safetensors" for i in range(n_files)]
                   if n_files > 1 else ["model.safetensors"])
    weight_map: dict[str, str] = {}
    with atomic_dir(out_dir, overwrite=overwrite, inputs=inputs) as tmp, \
            reporter.progress("merging", total=len(source.entries), unit="tensors") as bar:
        for shard_name, plan in zip(shard_names, plans.values()):
            with SafetensorsWriter(tmp / shard_name, plan, {"format": "pt"}) as writer:
                for name, st_dtype, shape in plan:
                    out = np.empty(shape, dtype=ST_DTYPES[st_dtype])
                    merged_modules += fill_tensor(source, name, adapter, out,
                                                  lambda rows, d=st_dtype: from_float32(rows, d))
                    writer.write(name, out)
                    weight_map[name] = shard_name
                    del out
                    release_memory()
                    bar.advance(1)
        adapter.check_all_used(base_dir)
        if n_files > 1:
            (tmp / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": needed}, "weight_map": weight_map}, indent=2), encoding="utf-8")
        merged_dtype = dtype if dtype != "auto" else _dominant_dtype(source)
        _write_config(tmp, config, merged_dtype, base_dir)
        copy_tokenizer_files(tmp, base_dir, adapter_dir)
    result = MergeResult(out_dir, len(source.entries), merged_modules, needed, merged_dtype)
    reporter.info(f"Merged {merged_modules} tensors from {adapter_dir} into {out_dir} "
                  f"({human_bytes(needed)}, {result.dtype}).")
    return result


def _dominant_dtype(source: TensorSource) -> str:
    """The dtype holding most of the bytes, as a --dtype name (f32, f16, bf16, ...)."""
    counts: dict[str, int] = {}
    for e in source.entries.values():
        counts[e.dtype] = counts.get(e.dtype, 0) + e.nbytes
    st = max(counts, key=counts.get) if counts else "F32"
    return {"F32": "f32", "F16": "f16", "BF16": "bf16"}.get(st, st.lower())


def _write_config(out: Path, config: dict[str, Any], dtype: str, base_dir: Path) -> None:
    """config.json of the merged copy (plain 16/32-bit weights) and generation_config.json."""
    config = dict(config)
    config.pop("quantization_config", None)
    torch_name = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}.get(dtype, "float32")
    for key in ("torch_dtype", "dtype"):
        if key in config:
            config[key] = torch_name
    if "torch_dtype" not in config and "dtype" not in config:
        config["dtype"] = torch_name
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    gen = Path(base_dir) / "generation_config.json"
    if gen.is_file():
        shutil.copy2(gen, out / gen.name)
