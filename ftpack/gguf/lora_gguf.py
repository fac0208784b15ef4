"""A PEFT LoRA adapter written as a llama.cpp LoRA GGUF (what Ollama's ADAPTER takes).

Shipping only the adapter means the base model's GGUF is reused as it is, so the adapter
must address the *base GGUF's* tensors exactly as llama.cpp loads them
(``src/llama-adapter.cpp``): ``general.type = adapter``, ``general.architecture`` = the
base's, ``adapter.type = lora``, ``adapter.lora.alpha`` (f32), and for every adapted
weight ``<base tensor>.lora_a`` (ggml ne ``[n_in, r]``) and ``<base tensor>.lora_b``
(ne ``[r, n_out]``) — PEFT's ``lora_A.weight (r, n_in)`` and ``lora_B.weight (n_out, r)``
as they are. llama.cpp adds ``scale * B @ (A @ x)`` with ``scale = alpha / r`` (r read
from each ``lora_b``), which is PEFT's forward.

Two things make the names and rows match the base: the tensor names come from the same
gguf-py name map :mod:`ftpack.gguf.convert` uses, and the q/k rows of ``lora_b`` get the
same rope row permutation the converter applies to q/k weights (llama.cpp's converter
and transformers' GGUF loader do the same and its inverse, so a base read back from a
GGUF trains in Hugging Face's row order too). PEFT's scaling is folded in: rsLoRA
(``alpha / sqrt(r)``) becomes ``alpha' = scaling * r``; modules whose scaling differs
from the file's one alpha (rank/alpha patterns) carry the ratio in their ``lora_b``.
What llama.cpp's LoRA format cannot express is refused with the reason: DoRA
magnitudes, LoRA on embeddings or biases, fully trained modules (modules_to_save),
Conv1D layouts, and architectures outside ftpack's own converter.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ftpack.core.errors import bad_input

#: Adapter tensor types: what ``--outtype`` becomes for the (small) adapter tensors.
ADAPTER_OUTTYPES = ("f32", "f16")
SHIP_HINT = "Use --ship merged: the adapter is then fused into a full GGUF instead."


@dataclass
class LoraGGUFResult:
    """What :func:`write_lora_gguf` wrote."""

    path: Path
    architecture: str
    alpha: float
    ranks: list[int]
    modules: int  # adapted weights (each one lora_a + one lora_b tensor)
    bytes: int
    outtype: str
    notes: list[str] = field(default_factory=list)  # how PEFT's scaling was folded, in words

    def as_metrics(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "alpha": self.alpha, "ranks": self.ranks,
                "modules": self.modules, "bytes": self.bytes, "outtype": self.outtype, "notes": self.notes}


def adapter_outtype(outtype: str | None) -> str:
    """The adapter's tensor type for a build's ``outtype``: f32 stays f32, everything else is f16
    (bf16 and q8_0 buy nothing on tensors of rank r, and llama.cpp's own LoRA converter writes f16)."""
    return "f32" if (outtype or "").lower() == "f32" else "f16"


def shipping_problems(config: dict[str, Any]) -> list[str]:
    """Why a PEFT adapter config cannot become a llama.cpp LoRA GGUF (empty: it can)."""
    problems = []
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        problems.append(f"it is a {config.get('peft_type')} adapter, not LoRA")
    if config.get("use_dora"):
        problems.append("DoRA's learned magnitudes have no place in llama.cpp's LoRA format")
    if config.get("lora_bias"):
        problems.append("LoRA biases (lora_bias) have no place in llama.cpp's LoRA format")
    if config.get("modules_to_save"):
        problems.append("fully trained modules (modules_to_save) are not low-rank factors")
    if config.get("fan_in_fan_out"):
        problems.append("Conv1D (fan_in_fan_out) layouts are not llama.cpp's")
    for key in ("layer_replication", "trainable_token_indices", "target_parameters", "alora_invocation_tokens"):
        if config.get(key):
            problems.append(f"{key} is not supported")
    return problems


def write_lora_gguf(adapter_dir: str | Path, out: str | Path, *, base_dir: str | Path | None = None,
                    base_gguf: str | Path | None = None, outtype: str = "f16", name: str | None = None,
                    reporter=None) -> LoraGGUFResult:
    """Write the PEFT adapter in ``adapter_dir`` as a llama.cpp LoRA GGUF at ``out``.

    ``base_dir``: the Hugging Face folder it was trained on (its config.json gives the
    architecture, layer and head counts; default: adapter_config's base). ``base_gguf``:
    the GGUF it will be applied to; when given, every adapted tensor must exist there
    with the adapter's shape, and the head counts used for the row permutation are
    the GGUF's own.
    """
    import gguf
    import numpy as np

    from ftpack.core.atomic import atomic_path, human_bytes
    from ftpack.core.report import get_reporter
    from ftpack.gguf.convert import ARCHITECTURES, permute_rope_rows
    from ftpack.gguf.hf_folder import load_hf_config
    from ftpack.gguf.lora import load_adapter, resolve_adapter_base
    from ftpack.gguf.vendored import config_architecture

    reporter = reporter or get_reporter()
    outtype = outtype.lower()
    if outtype not in ADAPTER_OUTTYPES:
        raise bad_input(f"Adapter GGUF type {outtype!r} is not one of: {', '.join(ADAPTER_OUTTYPES)}.")
    adapter_dir, out = Path(adapter_dir), Path(out)
    adapter = load_adapter(adapter_dir)
    problems = shipping_problems(adapter.config)
    if adapter.replacements:
        problems.append(f"fully trained tensors ({', '.join(sorted(adapter.replacements)[:3])}) are not low-rank")
    problems += [f"{m.module}: LoRA on an embedding" for m in adapter.modules.values() if m.embedding][:1]
    problems += [f"{m.module}: a LoRA bias" for m in adapter.modules.values() if m.bias is not None][:1]
    if problems:
        raise bad_input(f"{adapter_dir} cannot be shipped as a llama.cpp LoRA adapter: {'; '.join(problems)}.",
                        SHIP_HINT)
    base_dir = Path(base_dir) if base_dir is not None else resolve_adapter_base(adapter, None)
    config = load_hf_config(base_dir)
    arch_name = config_architecture(config) or ""
    spec = ARCHITECTURES.get(arch_name)
    if spec is None:
        raise bad_input(f"Shipping a LoRA adapter for a {arch_name or 'unknown'} base is not supported: ftpack "
                        f"knows the GGUF tensor names and row order of {', '.join(sorted(ARCHITECTURES))} only.",
                        SHIP_HINT)
    n_layers = int(config["num_hidden_layers"])
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    base_shapes: dict[str, tuple[int, ...]] | None = None
    if base_gguf is not None:
        base_shapes, gguf_arch, heads = _gguf_tensor_shapes(Path(base_gguf))
        if gguf_arch != spec.gguf_arch:
            raise bad_input(f"The adapter was trained on a {spec.gguf_arch} model but {base_gguf} is a "
                            f"{gguf_arch} GGUF.", "Ship it on the base it was trained on.")
        n_head, n_kv = heads[0] or n_head, heads[1] or n_kv

    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == spec.gguf_arch)
    name_map = gguf.get_tensor_name_map(arch_enum, n_layers)
    alpha = _common_alpha(adapter.modules.values())
    np_type = np.float32 if outtype == "f32" else np.float16
    pairs: list[tuple[str, Any, Any]] = []
    rescaled = 0
    for module in sorted(adapter.modules.values(), key=lambda m: _layer_order(m.module)):
        hf_name = module.module + ".weight"
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight",))
        if gguf_name is None:
            raise bad_input(f"The adapter adapts {module.module}, which has no tensor in a {spec.gguf_arch} GGUF.",
                            "Train without that target module (--target-modules), or use --ship merged.")
        a = np.asarray(module.a, dtype=np.float32)
        b = np.asarray(module.b, dtype=np.float32)
        r, n_in = a.shape
        n_out = b.shape[0]
        if b.shape[1] != r:
            raise bad_input(f"{adapter_dir}: {module.module} has lora_A {list(a.shape)} but lora_B {list(b.shape)}.")
        if base_shapes is not None:
            shape = base_shapes.get(gguf_name)
            if shape is None:
                raise bad_input(f"The adapter adapts {gguf_name} ({module.module}), which {base_gguf} does not have.",
                                "Ship it on the base it was trained on (a tied output head has no output.weight: "
                                "train without lm_head).")
            if tuple(shape[:2]) != (n_in, n_out):
                raise bad_input(f"The adapter does not fit {base_gguf}: {gguf_name} is {list(shape[:2])} (ggml "
                                f"ne) there but the adapter's is {[n_in, n_out]}.",
                                "Ship it on the base it was trained on.")
        factor = module.scaling * r / alpha
        if factor != 1.0:
            b = b * np.float32(factor)
            rescaled += 1
        if spec.permute_qk and hf_name.endswith("q_proj.weight"):
            b = permute_rope_rows(b, n_head)
        elif spec.permute_qk and hf_name.endswith("k_proj.weight"):
            b = permute_rope_rows(b, n_kv)
        pairs.append((gguf_name, np.ascontiguousarray(a.astype(np_type)), np.ascontiguousarray(b.astype(np_type))))
    if not pairs:
        raise bad_input(f"{adapter_dir} holds no LoRA weights.")

    notes = []
    if adapter.config.get("use_rslora"):
        notes.append(f"rsLoRA scaling alpha/sqrt(r) folded into adapter.lora.alpha = {alpha:g}")
    if rescaled:
        notes.append(f"{rescaled} module(s) with their own rank/alpha: scaling folded into lora_b")
    writer = gguf.GGUFWriter(path=None, arch=spec.gguf_arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    writer.add_name(name or adapter_dir.resolve().name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if outtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if adapter.base_model_name_or_path:
        writer.add_base_model_count(1)
        writer.add_base_model_name(0, Path(adapter.base_model_name_or_path).name)
    for gguf_name, a, b in pairs:
        writer.add_tensor(gguf_name + ".lora_a", a)
        writer.add_tensor(gguf_name + ".lora_b", b)
    with atomic_path(out) as tmp:
        try:
            writer.write_header_to_file(path=tmp)
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    size = out.stat().st_size
    ranks = sorted({int(a.shape[0]) for _, a, _ in pairs})
    reporter.info(f"Wrote {out} ({human_bytes(size)}, {len(pairs)} adapted weights, rank {'/'.join(map(str, ranks))}, "
                  f"alpha {alpha:g}, {outtype})")
    return LoraGGUFResult(out, spec.gguf_arch, float(alpha), ranks, len(pairs), size, outtype, notes)


def _common_alpha(modules: Iterable[Any]) -> float:
    """The one ``adapter.lora.alpha`` (scaling * rank) that most modules need as it is."""
    counts = Counter(float(m.scaling) * int(m.a.shape[0]) for m in modules)
    if not counts:
        raise bad_input("The adapter holds no LoRA modules.")
    return counts.most_common(1)[0][0]


def _layer_order(module: str) -> tuple:
    """Tensors in layer order (blk.0 …, then blk.1 …), as converters write them."""
    import re

    m = re.search(r"\.(\d+)\.", module)
    return (int(m.group(1)) if m else -1, module)


def _gguf_tensor_shapes(path: Path) -> tuple[dict[str, tuple[int, ...]], str, tuple[int, int]]:
    """({tensor name: ggml ne}, general.architecture, (head_count, head_count_kv)) of a GGUF."""
    from ftpack.gguf.header import read_gguf_header

    header = read_gguf_header(path)
    arch = str(header.get("general.architecture", "STRING") or "unknown")
    heads = header.get(f"{arch}.attention.head_count")
    kv = header.get(f"{arch}.attention.head_count_kv")
    return header.tensors, arch, (int(heads) if isinstance(heads, int) else 0, int(kv) if isinstance(kv, int) else 0)
