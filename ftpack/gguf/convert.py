"""Hugging Face folder → GGUF, written tensor by tensor with gguf-py's ``GGUFWriter``.

Why our own converter: llama.cpp's ``convert_hf_to_gguf.py`` is not installable from a
package registry, and ``merge_and_unload`` + save + convert needs the whole model in
memory twice. Here every output tensor is planned from the safetensors headers first
(name, shape, type, size: ``add_tensor_info``), the header/metadata/tensor index are
written, and then each tensor is read, merged with the adapter (fp32), permuted for
llama.cpp's rope layout, cast and written (``write_tensor_data``) before the next one
is read. Peak memory ≈ one tensor.

The metadata follows llama.cpp's converter: architecture hyper-parameters, rope
settings and scaling, the tokenizer (SentencePiece ``llama`` or BPE ``gpt2`` with
merges and the pre-tokenizer name llama.cpp needs), token types, special ids,
add_bos/add_eos, the chat template, and general.* provenance. Architectures outside
the llama family go to llama.cpp's own script when a checkout is available.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftpack.core.atomic import atomic_path, check_free_space, human_bytes
from ftpack.core.config import OUTTYPES
from ftpack.core.errors import FtpackError, bad_input
from ftpack.core.quiet import quiet_libraries
from ftpack.core.report import get_reporter
from ftpack.gguf.hf_folder import ensure_safetensors, load_hf_config, tokenizer_dir
from ftpack.gguf.lora import LoraAdapter, fill_tensor, load_adapter, resolve_adapter_base
from ftpack.gguf.safetensors_io import TensorSource, f32_to_bf16_bits, numel, release_memory

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class ArchSpec:
    """How one Hugging Face architecture maps to llama.cpp's."""

    gguf_arch: str  # llama.cpp architecture name
    permute_qk: bool  # HF rotates halves; llama.cpp interleaves: permute q/k rows


#: Hugging Face ``architectures[0]`` -> llama.cpp architecture. Mistral (dense) runs as llama.
ARCHITECTURES: dict[str, ArchSpec] = {
    "LlamaForCausalLM": ArchSpec("llama", True),
    "MistralForCausalLM": ArchSpec("llama", True),
    "Qwen2ForCausalLM": ArchSpec("qwen2", False),
    "Qwen3ForCausalLM": ArchSpec("qwen3", False),
}

# The check string llama.cpp's converter tokenizes to tell BPE pre-tokenizers apart; the
# sha256 of str(token ids) names the pre-tokenizer (tokenizer.ggml.pre).
PRE_TOKENIZER_CHECK = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis "
    "concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? "
    "'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
#: known check hashes (from llama.cpp's converter) for the model families ftpack targets
PRE_TOKENIZER_HASHES = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5/2/2.5/3
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3 embedding
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM/SmolLM2
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Mistral Nemo
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
    "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34": "starcoder",
    "32d85c31273f8019248f2559fed492d929ea28b17e51d81d3bb36fff23ca72b3": "stablelm2",
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
    "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e": "gpt-4o",
}
# Split regexes of pre-tokenizers llama.cpp implements, for tokenizers with a custom
# vocabulary (whose check hash is unknown) but a standard pre-tokenizer.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass
class TensorPlan:
    """One output tensor: where it comes from and what it becomes."""

    hf_name: str
    gguf_name: str
    shape: tuple[int, ...]
    qtype: int  # GGMLQuantizationType
    nbytes: int
    permute_heads: int | None = None  # q/k: heads to permute over


@dataclass
class ConvertResult:
    path: Path
    architecture: str
    outtype: str
    tensors: int
    bytes: int
    pre_tokenizer: str | None
    merged_tensors: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)


# -- entry point ------------------------------------------------------------------------

def convert_to_gguf(model_dir: Path | str, out: Path | str, *, outtype: str = "f16",
                    adapter_dir: Path | str | None = None, name: str | None = None,
                    llama_cpp_dir: Path | str | None = None, allow_pickle: bool = False) -> ConvertResult:
    """Convert a Hugging Face model folder (optionally + a LoRA adapter) to one GGUF file.

    ``model_dir`` may itself be an adapter folder; its base then comes from
    adapter_config.json. With ``adapter_dir`` the adapter is merged on the fly. PyTorch
    ``.bin`` weights are converted to safetensors once (:func:`ensure_safetensors`);
    ``allow_pickle`` lets ones PyTorch's safe loader refuses be unpickled.

    ``name`` (default: the folder's name) becomes general.name, adjusted so that llama.cpp
    strips whitespace after special tokens as the folder's tokenizer does
    (:func:`ftpack.training.token_check.gguf_model_name`): llama.cpp decides that from the
    name alone. Both converters write the same name.
    """
    from ftpack.gguf.vendored import config_architecture

    outtype = outtype.lower()
    if outtype not in OUTTYPES:
        raise bad_input(f"--outtype {outtype!r} is not one of: {', '.join(OUTTYPES)}.")
    model_dir, out = Path(model_dir), Path(out)
    adapter: LoraAdapter | None = None
    if adapter_dir is None and (model_dir / "adapter_config.json").is_file() and not (model_dir / "config.json").is_file():
        adapter_dir = model_dir
        adapter = load_adapter(model_dir)
        model_dir = resolve_adapter_base(adapter, None)
    elif adapter_dir is not None:
        adapter = load_adapter(Path(adapter_dir))
    config = load_hf_config(model_dir)
    model_dir = ensure_safetensors(model_dir, allow_pickle=allow_pickle)
    arch_name = config_architecture(config)  # architectures[0], else transformers' class for its model_type
    adapter_path = Path(adapter_dir) if adapter_dir else None
    name = gguf_name(name or _default_name(model_dir, adapter_path), tokenizer_dir(model_dir, adapter_path))
    spec = ARCHITECTURES.get(arch_name or "")
    if spec is None:
        return _convert_with_llama_cpp(model_dir, out, outtype, adapter_dir, arch_name, llama_cpp_dir, name)
    if config.get("quantization_config"):
        raise bad_input(f"{model_dir} holds quantized weights ({config['quantization_config'].get('quant_method')}).",
                        "Convert the 16-bit original model; ftpack quantizes the GGUF afterwards.")
    return _convert_llama_family(model_dir, out, outtype, adapter, adapter_path, config, spec, name)


def _convert_llama_family(model_dir: Path, out: Path, outtype: str, adapter: LoraAdapter | None,
                          adapter_dir: Path | None, config: dict[str, Any], spec: ArchSpec,
                          name: str) -> ConvertResult:
    import gguf

    reporter = get_reporter()
    source = TensorSource(model_dir)
    tok_dir = tokenizer_dir(model_dir, adapter_dir)
    plan = plan_tensors(source, config, spec, outtype, adapter)
    total = sum(p.nbytes for p in plan)
    check_free_space(out.parent, total + (32 << 20), f"the GGUF file {out.name}")

    writer = gguf.GGUFWriter(path=None, arch=spec.gguf_arch)
    meta = write_general_metadata(writer, model_dir, adapter, config, name, sum(numel(p.shape) for p in plan))
    write_hyperparameters(writer, config, spec)
    writer.add_file_type(file_type_of(outtype))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    with quiet_libraries():  # gguf-py's notes on unusual tokenizers are not for users (--debug shows them)
        pre = write_tokenizer(writer, tok_dir, config)
    meta["pre_tokenizer"] = pre

    for p in plan:
        writer.add_tensor_info(p.gguf_name, p.shape, _np_float32(), p.nbytes, raw_dtype=gguf.GGMLQuantizationType(p.qtype))

    merged = 0
    with atomic_path(out) as tmp:
        try:
            writer.write_header_to_file(path=tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            with reporter.progress("converting", total=len(plan), unit="tensors") as bar:
                for p in plan:
                    data, was_merged = _tensor_data(source, adapter, p, config)
                    merged += was_merged
                    writer.write_tensor_data(data)
                    del data
                    release_memory()
                    bar.advance(1)
            if adapter is not None:
                adapter.check_all_used(model_dir)
        finally:
            writer.close()
    reporter.info(f"Wrote {out} ({human_bytes(out.stat().st_size)}, {len(plan)} tensors, {outtype}"
                  + (f", {merged} tensors merged with the adapter" if adapter is not None else "") + ").")
    return ConvertResult(out, spec.gguf_arch, outtype, len(plan), out.stat().st_size, pre, merged, meta)


def file_type_of(outtype: str) -> int:
    """general.file_type of an outtype, from gguf-py's LlamaFileType (f32 -> ALL_F32, f16 -> MOSTLY_F16)."""
    from gguf import LlamaFileType

    key = outtype.upper()
    for ftype in LlamaFileType:
        if ftype.name in (f"ALL_{key}", f"MOSTLY_{key}"):
            return int(ftype)
    raise bad_input(f"--outtype {outtype!r} is not one of: {', '.join(OUTTYPES)}.")


def _np_float32():
    import numpy as np

    return np.dtype(np.float32)


def _default_name(model_dir: Path, adapter_dir: Path | None) -> str:
    return (adapter_dir or model_dir).resolve().name


def gguf_name(name: str, tok_dir: Path) -> str:
    """general.name for a GGUF whose tokenizer comes from ``tok_dir``: ``name``, adjusted to
    the llama.cpp strip behaviour of that tokenizer (ftpack.training.token_check)."""
    from ftpack.training.token_check import folder_rstrips, gguf_model_name

    return gguf_model_name(name, folder_rstrips(tok_dir))


# -- tensors ------------------------------------------------------------------------------

def plan_tensors(source: TensorSource, config: dict[str, Any], spec: ArchSpec, outtype: str,
                 adapter: LoraAdapter | None) -> list[TensorPlan]:
    """Every output tensor with its GGUF name, type and size, from headers alone."""
    import gguf

    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == spec.gguf_arch)
    n_layers = int(_need(config, "num_hidden_layers"))
    name_map = gguf.get_tensor_name_map(arch_enum, n_layers)
    n_head = int(_need(config, "num_attention_heads"))
    n_kv = int(config.get("num_key_value_heads") or n_head)
    tied = bool(config.get("tie_word_embeddings", False))
    touched_head = False
    if adapter is not None:
        head_lora, head_replacement = adapter.weight_for("lm_head.weight")
        touched_head = head_lora is not None or head_replacement is not None
        adapter.used.discard("lm_head")
        adapter.used.discard("lm_head.weight")
    plan: list[TensorPlan] = []
    for hf_name, entry in source.entries.items():
        if hf_name.endswith(".rotary_emb.inv_freq"):
            continue
        if hf_name == "lm_head.weight" and tied and not touched_head:
            continue  # llama.cpp reuses token_embd when output.weight is absent
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise FtpackError(f"Unexpected tensor {hf_name} for a {spec.gguf_arch} model.",
                              "This model variant is not supported by ftpack's converter; "
                              "use llama.cpp's convert_hf_to_gguf.py (--llama-cpp DIR).")
        qtype = tensor_qtype(gguf_name, entry.shape, outtype)
        permute = None
        if spec.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            permute = n_head
        elif spec.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            permute = n_kv
        plan.append(TensorPlan(hf_name, gguf_name, entry.shape, qtype, tensor_nbytes(entry.shape, qtype), permute))
    rope = rope_parameters(config)
    if str(rope.get("rope_type", "")).lower() == "llama3":
        head_dim = _head_dim(config)
        plan.append(TensorPlan("<rope_freqs>", "rope_freqs.weight", (head_dim // 2,), 0, head_dim // 2 * 4))
    return plan


def tensor_qtype(gguf_name: str, shape: tuple[int, ...], outtype: str) -> int:
    """GGML type of one tensor, with llama.cpp's rules: 1-D, norms and biases stay F32."""
    from gguf import GGMLQuantizationType as Q

    if len(shape) <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        return Q.F32
    if outtype == "f32":
        return Q.F32
    if outtype == "bf16":
        return Q.BF16
    if outtype == "q8_0" and shape[-1] % 32 == 0:
        return Q.Q8_0
    return Q.F16  # f16, and q8_0 rows that do not split into 32-value blocks


def tensor_nbytes(shape: tuple[int, ...], qtype: int) -> int:
    import gguf

    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(qtype)]
    return numel(shape) // block * type_size


def _tensor_data(source: TensorSource, adapter: LoraAdapter | None, p: TensorPlan,
                 config: dict[str, Any]) -> tuple["np.ndarray", bool]:
    """One output tensor, ready for ``write_tensor_data``: read in row chunks, merged with
    the adapter, cast/quantized into a preallocated array (numpy only: no torch import)."""
    import gguf
    import numpy as np

    Q = gguf.GGMLQuantizationType
    qtype = Q(p.qtype)
    if p.hf_name == "<rope_freqs>":
        return llama3_rope_factors(config), False
    shape = source.entries[p.hf_name].shape
    if qtype == Q.F32:
        out, convert = np.empty(shape, np.float32), (lambda rows: rows)
    elif qtype == Q.F16:
        out, convert = np.empty(shape, np.float16), (lambda rows: rows)  # numpy casts on assignment
    elif qtype == Q.BF16:
        out, convert = np.empty(shape, np.uint16), f32_to_bf16_bits
    else:
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        out = np.empty((*shape[:-1], shape[-1] // block * type_size), np.uint8)
        convert = (lambda rows: gguf.quants.quantize(rows, qtype))
    merged = fill_tensor(source, p.hf_name, adapter, out, convert)
    if p.permute_heads is not None:
        out = permute_rope_rows(out, p.permute_heads)
    if out.nbytes != p.nbytes:  # pragma: no cover - a planning bug, not a user error
        raise FtpackError(f"Internal error: {p.gguf_name} has {out.nbytes} bytes, planned {p.nbytes}.")
    return out, merged


def permute_rope_rows(t: "np.ndarray", n_head: int) -> "np.ndarray":
    """Reorder q/k rows from HF's rotate-half layout to llama.cpp's interleaved pairs.

    Works on any row-wise array (float, bf16 bits, Q8_0 blocks): only rows move."""
    shape = t.shape
    return t.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def llama3_rope_factors(config: dict[str, Any]) -> "np.ndarray":
    """Llama 3.1-style rope frequency factors (llama.cpp stores them as rope_freqs)."""
    import math

    import numpy as np

    rope = rope_parameters(config)
    base = float(rope.get("rope_theta", 10000.0))
    dim = _head_dim(config)
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = float(rope.get("factor", 8.0))
    low = float(rope.get("low_freq_factor", 1.0))
    high = float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for f in freqs.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


# -- metadata -----------------------------------------------------------------------------

def _need(config: dict[str, Any], key: str) -> Any:
    if config.get(key) is None:
        raise bad_input(f"config.json lacks {key!r}; cannot describe the model to llama.cpp.")
    return config[key]


def _head_dim(config: dict[str, Any]) -> int:
    return int(config.get("head_dim") or int(_need(config, "hidden_size")) // int(_need(config, "num_attention_heads")))


def rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """Rope settings from transformers 5 ``rope_parameters`` or 4.x ``rope_theta``/``rope_scaling``."""
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    if "full_attention" in rope and isinstance(rope["full_attention"], dict):
        rope = dict(rope["full_attention"])
    if "rope_type" not in rope and "type" in rope:
        rope["rope_type"] = rope["type"]
    if "rope_theta" not in rope and config.get("rope_theta") is not None:
        rope["rope_theta"] = config["rope_theta"]
    return rope


def write_hyperparameters(writer, config: dict[str, Any], spec: ArchSpec) -> None:
    """The ``{arch}.*`` keys llama.cpp reads for the llama family."""
    import gguf

    writer.add_context_length(int(_need(config, "max_position_embeddings")))
    writer.add_embedding_length(int(_need(config, "hidden_size")))
    writer.add_block_count(int(_need(config, "num_hidden_layers")))
    writer.add_feed_forward_length(int(_need(config, "intermediate_size")))
    n_head = int(_need(config, "num_attention_heads"))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or n_head))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    if config.get("head_dim") is not None:
        writer.add_key_length(int(config["head_dim"]))
        writer.add_value_length(int(config["head_dim"]))
    if spec.gguf_arch == "llama":
        writer.add_vocab_size(int(_need(config, "vocab_size")))
        writer.add_rope_dimension_count(_head_dim(config))
    rope = rope_parameters(config)
    if rope.get("rope_theta") is not None:
        writer.add_rope_freq_base(float(rope["rope_theta"]))
    rope_type = str(rope.get("rope_type") or "default").lower()
    factor = rope.get("factor")
    if rope_type == "linear" and factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(factor))
    elif rope_type == "yarn" and factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(factor))
        orig = rope.get("original_max_position_embeddings") or config.get("max_position_embeddings")
        writer.add_rope_scaling_orig_ctx_len(int(orig))
        if rope.get("extrapolation_factor") is not None:
            writer.add_rope_scaling_yarn_ext_factor(float(rope["extrapolation_factor"]))
        attn = rope.get("attention_factor", rope.get("attn_factor"))
        if attn is not None:
            writer.add_rope_scaling_yarn_attn_factor(float(attn))
        if rope.get("beta_fast") is not None:
            writer.add_rope_scaling_yarn_beta_fast(float(rope["beta_fast"]))
        if rope.get("beta_slow") is not None:
            writer.add_rope_scaling_yarn_beta_slow(float(rope["beta_slow"]))
    elif rope_type in ("default", "llama3", "none"):
        pass  # llama3 factors travel as the rope_freqs tensor
    else:
        raise bad_input(f"Rope scaling type {rope_type!r} is not supported by ftpack's converter.",
                        "Use llama.cpp's convert_hf_to_gguf.py (--llama-cpp DIR).")


def write_general_metadata(writer, model_dir: Path, adapter: LoraAdapter | None, config: dict[str, Any],
                           name: str, n_params: int) -> dict[str, Any]:
    """general.* keys: name, type, size, license, and where the model came from."""
    import gguf

    card = _model_card(model_dir)
    writer.add_type("model")
    writer.add_name(name)
    writer.add_size_label(gguf.size_label(n_params, 0, 0, 0))
    license_ = card.get("license") or _gguf_source_license(model_dir)
    if license_:
        writer.add_license(",".join(license_) if isinstance(license_, list) else str(license_))
    bases: list[str] = []
    if adapter is not None:
        bases.append(adapter.base_model_name_or_path or str(model_dir))
        writer.add_finetune("lora" if not adapter.use_dora else "dora")
    else:
        recorded = card.get("base_model")
        if isinstance(recorded, str):
            bases.append(recorded)
        elif isinstance(recorded, list):
            bases += [str(b) for b in recorded]
    if bases:
        writer.add_base_model_count(len(bases))
        for i, base in enumerate(bases):
            writer.add_base_model_name(i, Path(base).name if os.sep in base and Path(base).exists() else base)
            if re.fullmatch(r"[\w.-]+/[\w.-]+", base) and not Path(base).exists():
                writer.add_base_model_organization(i, base.split("/")[0])
                writer.add_base_model_repo_url(i, f"https://huggingface.co/{base}")
    return {"name": name, "license": license_, "base_models": bases}


def _model_card(folder: Path) -> dict[str, Any]:
    """The YAML front matter of README.md (license, base_model), if any."""
    readme = folder / "README.md"
    if not readme.is_file():
        return {}
    text = readme.read_text(encoding="utf-8", errors="replace")
    m = re.match(r"^---\s*\n(.*?)\n---", text, re.S)
    if not m:
        return {}
    try:
        import yaml

        data = yaml.safe_load(m.group(1))
    except Exception:
        return {}
    return data if isinstance(data, dict) else {}


def _gguf_source_license(folder: Path) -> str | None:
    """A base materialised from a GGUF keeps the license of that GGUF (ftpack-source.json)."""
    src = folder / "ftpack-source.json"
    try:
        path = json.loads(src.read_text(encoding="utf-8")).get("source")
        if not path or not Path(path).is_file():
            return None
        from ftpack.gguf.header import read_gguf_header

        return read_gguf_header(path).get("general.license", "STRING")
    except Exception:
        return None


# -- tokenizer ----------------------------------------------------------------------------


def _write_llama_vocab(writer, tok_dir: Path, tokens: list, scores: list, types: list):
    """SentencePiece-style vocabulary (llama.cpp's `llama` tokenizer model); its special tokens."""
    import gguf

    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    return gguf.SpecialVocab(tok_dir, load_merges=False, n_vocab=len(tokens))

def write_tokenizer(writer, tok_dir: Path, config: dict[str, Any]) -> str | None:
    """tokenizer.ggml.* keys; returns the pre-tokenizer name (None for SentencePiece)."""
    import gguf

    vocab_size = int(_need(config, "vocab_size"))
    tok_json = tok_dir / "tokenizer.json"
    hf = json.loads(tok_json.read_text(encoding="utf-8")) if tok_json.is_file() else None
    model = (hf or {}).get("model") or {}
    if (tok_dir / "tokenizer.model").is_file():
        tokens, scores, types = sentencepiece_vocab(tok_dir, vocab_size)
        special, pre = _write_llama_vocab(writer, tok_dir, tokens, scores, types), None
    elif model.get("type") == "BPE" and model.get("byte_fallback"):
        vocab = gguf.LlamaHfVocab(tok_dir)  # Llama/Mistral SentencePiece-style BPE in tokenizer.json
        tokens, scores, types = [], [], []
        for text, score, toktype in vocab.all_tokens():
            tokens.append(text)
            scores.append(score)
            types.append(toktype)
        tokens, scores, types = _pad_vocab(tokens, scores, types, vocab_size)
        special, pre = _write_llama_vocab(writer, tok_dir, tokens, scores, types), None
    elif model.get("type") == "BPE":
        tokens, types = bpe_vocab(hf, vocab_size)
        pre = detect_pre_tokenizer(tok_json, hf)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        special = gguf.SpecialVocab(tok_dir, load_merges=True, n_vocab=len(tokens))
    else:
        raise bad_input(f"Tokenizer in {tok_dir} is not supported (need tokenizer.model or a BPE tokenizer.json).",
                        "Use llama.cpp's convert_hf_to_gguf.py (--llama-cpp DIR).")
    # special ids the tokenizer folder lacks come from config.json (as llama.cpp does)
    for typ in ("bos", "eos", "pad", "unk"):
        if typ not in special.special_token_ids and isinstance(config.get(f"{typ}_token_id"), int):
            special._set_special_token(typ, config[f"{typ}_token_id"])
    if tok_json.is_file():  # add_bos/add_eos exactly as the HF tokenizer behaves
        adds = special_tokens_added(tok_json, special.special_token_ids)
        special.add_special_token.update(adds)
    if special.chat_template is None:
        get_reporter().warn(f"No chat template in {tok_dir}; the GGUF will have none.",
                            "Save the tokenizer with its chat template (tokenizer.chat_template) before converting.")
    special.add_to_gguf(writer, quiet=True)
    return pre


def _pad_vocab(tokens, scores, types, vocab_size):
    import gguf

    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    return tokens, scores, types


def bpe_vocab(hf: dict[str, Any], vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings and types of a byte-level BPE tokenizer.json, padded to vocab_size."""
    import gguf

    by_id: dict[int, str] = {i: t for t, i in hf["model"]["vocab"].items()}
    added = {a["id"]: a for a in hf.get("added_tokens", [])}
    for i, a in added.items():
        by_id[i] = a["content"]
    size = max(vocab_size, max(by_id) + 1)
    tokens, types = [], []
    for i in range(size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        text = by_id[i]
        if i in added:
            looks_special = text.startswith("<|") and text.endswith("|>")
            types.append(gguf.TokenType.CONTROL if added[i].get("special") or looks_special
                         else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(text)
    return tokens, types


def sentencepiece_vocab(tok_dir: Path, vocab_size: int) -> tuple[list[bytes], list[float], list[int]]:
    """Pieces, scores and types from tokenizer.model, plus added tokens (llama.cpp's rules)."""
    import gguf
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(tok_dir / "tokenizer.model"))
    size = max(vocab_size, sp.vocab_size())
    T = gguf.TokenType
    tokens = [f"[PAD{i}]".encode() for i in range(size)]
    scores = [-10000.0] * size
    types = [T.UNUSED] * size
    for i in range(sp.vocab_size()):
        tokens[i] = sp.IdToPiece(i).encode("utf-8")
        scores[i] = sp.GetScore(i)
        types[i] = (T.UNKNOWN if sp.IsUnknown(i) else T.CONTROL if sp.IsControl(i)
                    else T.UNUSED if sp.IsUnused(i) else T.BYTE if sp.IsByte(i) else T.NORMAL)
    added_file = tok_dir / "added_tokens.json"
    if added_file.is_file():
        for text, i in json.loads(added_file.read_text(encoding="utf-8")).items():
            if i < size:
                tokens[i], scores[i], types[i] = text.encode("utf-8"), -1000.0, T.USER_DEFINED
    cfg_file = tok_dir / "tokenizer_config.json"
    if cfg_file.is_file():
        decoder = json.loads(cfg_file.read_text(encoding="utf-8")).get("added_tokens_decoder", {})
        for key, data in decoder.items():
            i, text = int(key), data["content"]
            if i >= size:
                continue
            special = data.get("special") or (text.startswith("<|") and text.endswith("|>"))
            if not special:
                text = text.replace("\u2581", " ")
            tokens[i], scores[i] = text.encode("utf-8"), -1000.0
            types[i] = T.CONTROL if special else T.USER_DEFINED
    return tokens, scores, types


def detect_pre_tokenizer(tok_json: Path, hf: dict[str, Any]) -> str:
    """llama.cpp's pre-tokenizer name: by the check-string hash, else by the regex used."""
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(tok_json)).encode(PRE_TOKENIZER_CHECK).ids
    digest = sha256(str(ids).encode()).hexdigest()
    if digest in PRE_TOKENIZER_HASHES:
        return PRE_TOKENIZER_HASHES[digest]
    by_structure = pre_tokenizer_from_structure(hf.get("pre_tokenizer"))
    if by_structure is not None:
        return by_structure
    get_reporter().warn("Unknown BPE pre-tokenizer; using llama.cpp's 'gpt-2' rules. Tokenization of some "
                        "text (digits, whitespace runs) may differ from the Hugging Face tokenizer.",
                        "Use llama.cpp's convert_hf_to_gguf.py (--llama-cpp DIR) if it knows this model.")
    return "gpt-2"


def pre_tokenizer_from_structure(pre: dict[str, Any] | None) -> str | None:
    """Name a standard pre-tokenizer from tokenizer.json's pre_tokenizer section."""
    if not pre:
        return None
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    byte_level = [s for s in steps if s.get("type") == "ByteLevel"]
    if kinds == ["ByteLevel"] and byte_level[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and byte_level[0].get("use_regex", True):
        return "smollm"
    splits = [s.get("pattern", {}).get("Regex") for s in steps if s.get("type") == "Split"]
    if kinds == ["Split", "ByteLevel"] and not byte_level[0].get("use_regex", True):
        if splits[0] == _LLAMA3_SPLIT:
            return "llama-bpe"
        if splits[0] == _QWEN2_SPLIT:
            return "qwen2"
    return None


def special_tokens_added(tok_json: Path, special_ids: dict[str, int]) -> dict[str, bool]:
    """Whether encoding adds BOS/EOS, by asking the tokenizer itself."""
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(tok_json)).encode("a", add_special_tokens=True).ids
    out = {}
    if "bos" in special_ids:
        out["bos"] = bool(ids) and ids[0] == special_ids["bos"]
    if "eos" in special_ids:
        out["eos"] = len(ids) > 1 and ids[-1] == special_ids["eos"]
    return out


# -- other architectures: llama.cpp's own converter ----------------------------------------

def find_llama_cpp(llama_cpp_dir: Path | str | None) -> Path | None:
    """The llama.cpp checkout named by --llama-cpp or LLAMA_CPP_DIR, if it has the script."""
    candidate = llama_cpp_dir or os.environ.get("LLAMA_CPP_DIR")
    if not candidate:
        return None
    folder = Path(candidate).expanduser()
    if not (folder / "convert_hf_to_gguf.py").is_file():
        raise bad_input(f"{folder} has no convert_hf_to_gguf.py.",
                        "Point --llama-cpp (or LLAMA_CPP_DIR) at a llama.cpp checkout: "
                        "git clone https://github.com/ggml-org/llama.cpp")
    return folder


def _convert_with_llama_cpp(model_dir: Path, out: Path, outtype: str, adapter_dir: Path | str | None,
                            arch_name: str | None, llama_cpp_dir: Path | str | None, name: str) -> ConvertResult:
    from ftpack.gguf.vendored import conversion_route, converter_support, gguf_summary, llama_cpp_source, run_converter

    # --llama-cpp / LLAMA_CPP_DIR, else llama.cpp's converter from the installed llama-cpp-python's sdist
    llama_cpp = llama_cpp_source(llama_cpp_dir)
    route, reason = conversion_route(load_hf_config(model_dir), converter_support(llama_cpp))
    if route is None:
        raise bad_input(reason, "Pass --llama-cpp DIR (a newer llama.cpp checkout) if it supports this model.")
    reporter = get_reporter()
    import shutil
    import tempfile

    merged_dir = None
    src = model_dir
    try:
        if adapter_dir is not None:
            from ftpack.gguf.merge import merge_adapter

            merged_dir = Path(tempfile.mkdtemp(prefix="ftpack-merged-", dir=out.parent))
            reporter.warn("llama.cpp's converter cannot merge adapters: writing a merged copy first.")
            merge_adapter(model_dir, adapter_dir, merged_dir / "model")
            src = merged_dir / "model"
        source = TensorSource(src)
        check_free_space(out.parent, source.total_bytes + (32 << 20), f"the GGUF file {out.name}")
        with atomic_path(out) as tmp:
            reporter.info(reason)
            run_converter(llama_cpp, src, tmp, outtype, what=arch_name, model_name=name)
    finally:
        if merged_dir is not None:
            shutil.rmtree(merged_dir, ignore_errors=True)
    gguf_arch, tensors, pre = gguf_summary(out)
    return ConvertResult(out, gguf_arch, outtype, tensors, out.stat().st_size, pre, 0,
                         {"name": name, "converter": str(llama_cpp.convert_script),
                          "converter_origin": llama_cpp.origin, "llama_cpp_commit": llama_cpp.commit})


# -- the pipeline stage -------------------------------------------------------------------

def train_output(ctx) -> tuple[Path, Path | None]:
    """(model folder, adapter folder or None) from the train stage's record."""
    main = ctx.upstream_path("train")
    if (main / "adapter_config.json").is_file():
        adapter = load_adapter(main)
        return resolve_adapter_base(adapter, ctx.upstream("train").metrics.get("base_path")), main
    return main, None


def run_convert_stage(ctx) -> "Any":
    """Stage ``convert``: train output → gguf/<name>.<outtype>.gguf, then the tokenization check.

    Reads ``ctx.upstream("train")``: train/adapter (a PEFT adapter; its base from
    metrics["base_path"] or adapter_config.json) is fused on the fly, with no merged
    copy on disk; train/model (full weights) is converted as is. The tokenizer and chat
    template come from the folder training saved (adapter or model folder).

    The data stage compared training ids with llama.cpp's on a vocab-only GGUF written from
    the base's tokenizer files; this stage compares them again with the GGUF it wrote and
    the tokenizer training saved (:func:`check_final_tokenization`), so whatever training
    saved is covered too. A mismatch removes the GGUF and fails the stage.
    """
    from ftpack.core.runner import StageResult

    cfg = ctx.config
    base_dir, adapter_dir = train_output(ctx)
    outtype = (cfg.outtype or "f16").lower()
    path = ctx.layout.gguf_file(cfg.name, outtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    result = convert_to_gguf(base_dir, path, outtype=outtype, adapter_dir=adapter_dir, name=cfg.name,
                             llama_cpp_dir=os.environ.get("LLAMA_CPP_DIR"), allow_pickle=cfg.allow_pickle)
    tokenization = check_final_tokenization(ctx, tokenizer_dir(base_dir, adapter_dir), path)
    return StageResult(outputs=[path], main_output=path, metrics={
        "architecture": result.architecture, "outtype": outtype, "tensors": result.tensors,
        "bytes": result.bytes, "pre_tokenizer": result.pre_tokenizer, "merged_tensors": result.merged_tensors,
        "base_path": str(base_dir), "adapter": str(adapter_dir) if adapter_dir else None,
        "gguf_name": result.metadata.get("name"), **tokenization})


def check_final_tokenization(ctx, tok_dir: Path, gguf_path: Path) -> dict[str, Any]:
    """The trained model's tokenizer (as training saved it) against llama.cpp with the GGUF
    just written (vocab only), on the conversations the data stage checked (the same
    ≤256, same seed). Metrics: ``tokenization`` ("N/N identical") and the token count.
    A build without a data stage (nothing to sample) is recorded as not checked."""
    from ftpack.training.bases import load_tokenizer
    from ftpack.training.data import read_messages_jsonl
    from ftpack.training.templates import template_of_build
    from ftpack.training.token_check import check_tokenization

    layout, cfg = ctx.layout, ctx.config
    if "data" not in ctx.manifest.stages or not layout.train_file.is_file():
        return {"tokenization": "not checked (no data stage)"}
    conversations = read_messages_jsonl(layout.train_file)
    if layout.eval_file.is_file():
        conversations += read_messages_jsonl(layout.eval_file)
    tokenizer = load_tokenizer(tok_dir, trust_remote_code=bool(getattr(cfg, "trust_remote_code", False)))
    try:
        checked = check_tokenization(tokenizer, template_of_build(layout), conversations, gguf_path,
                                     seed=int(cfg.seed or 0),
                                     subject=f"the trained model's tokenizer ({tok_dir}) and llama.cpp with "
                                             f"{gguf_path.name}")
    except FtpackError:
        gguf_path.unlink(missing_ok=True)  # never leave a GGUF that is queried with other tokens
        raise
    ctx.reporter.info(f"Tokenization check on {gguf_path.name}: {checked.checked} conversations "
                      f"({checked.tokens} tokens) tokenize identically for the trained model and llama.cpp/Ollama.")
    return {"tokenization": f"{checked.checked}/{checked.checked} identical", "tokenization_tokens": checked.tokens}
