"""What learns: load the base for a method, add LoRA adapters or freeze for SFT.

- ``qlora``: base loaded 4-bit NF4 with double quantization (compute dtype bf16 where
  supported, else fp32), ``prepare_model_for_kbit_training``, then LoRA adapters.
  Works on CPU too (bitsandbytes' CPU backend), just slowly.
- ``lora``: 16-bit base on GPU (fp32 on CPU; with bf16 autocast on CPU the frozen
  projections are stored in bf16, see :mod:`ftpack.training.speed`) + LoRA adapters
  (DoRA when asked).
- ``sft``: only the top ``trainable_layers`` decoder blocks, the final norm and the
  LM head learn (``train_embeddings`` adds the input embeddings); the rest is frozen.
- ``full``: every parameter.

LoRA targets default to every linear projection inside the decoder blocks;
``target_modules`` overrides and is checked against the model. Never the LM head: TRL's
fused head (and ftpack's CPU head) score tokens with the head's base weight, so an adapter
there would get no gradient and silently stay untrained; ``--method sft`` trains the head.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ftpack.core.errors import FtpackError, bad_input
from ftpack.core.report import Reporter

def device_kind() -> str:
    """"cuda" when a CUDA GPU is usable, else "cpu"."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def precision_flags(precision: str, device: str) -> tuple[bool, bool]:
    """(bf16, fp16) mixed-precision flags for the Trainer; ``auto`` is resolved by
    :func:`ftpack.training.speed.resolve_precision` (bf16 on a CPU only where it is native
    and measured faster)."""
    from ftpack.training.speed import resolve_precision

    precision, _ = resolve_precision(precision, device)
    return precision == "bf16", precision == "fp16"


def make_trainable(path: Path, settings: Any, *, device: str, bf16: bool, reporter: Reporter | None = None,
                   fast_path: Any = None):
    """The base loaded for ``settings.method`` (resolved) with exactly the right parameters
    left trainable: LoRA/DoRA adapters, the top SFT blocks, or everything.

    bf16 on a CPU (:mod:`ftpack.training.speed`): attention that suits the CPU's bf16
    units, and a LoRA base whose frozen projections are stored in bf16. ``fast_path``
    (:class:`~ftpack.training.cuda_speed.FastPath`): the attention to load with and whether
    a 4-bit base keeps its other weights in bf16."""
    from ftpack.training.speed import prepare_lora_for_bf16_autocast, register_cpu_attention

    cpu_bf16 = device == "cpu" and bf16
    attention = getattr(fast_path, "attention", None)
    if attention is None and cpu_bf16:
        attention = register_cpu_attention()
    model = load_model(path, settings.method, device=device, bf16=bf16, trust_remote_code=settings.trust_remote_code,
                       attn_implementation=attention)
    if settings.method in ("qlora", "lora"):
        # The LoRA A matrices start random: seeded, so the same settings train the same model
        # (the Trainer seeds only later, when the adapter already exists).
        from transformers import set_seed

        set_seed(settings.seed)
        model = add_lora(model, quantized=settings.method == "qlora", r=settings.lora_r, alpha=settings.lora_alpha,
                         dropout=settings.lora_dropout, target_modules=settings.target_modules, dora=settings.dora,
                         gradient_checkpointing=bool(settings.gradient_checkpointing),
                         bf16_base=bool(getattr(fast_path, "bf16_base", False)))
        if cpu_bf16 and settings.method == "lora":
            prepare_lora_for_bf16_autocast(model, dora=settings.dora)
        return model
    if settings.method == "sft":
        freeze_for_sft(model, settings.trainable_layers, train_embeddings=settings.train_embeddings, reporter=reporter)
    return model


def load_model(path: Path, method: str, *, device: str, bf16: bool, trust_remote_code: bool = False,
               attn_implementation: str | None = None):
    """Load the base for ``method``: 4-bit NF4 for qlora, 16-bit (GPU) / fp32 (CPU) for lora,
    fp32 master weights for sft/full (mixed precision comes from the Trainer).
    ``attn_implementation``: None = transformers' default."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if method == "qlora":
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if (device == "cuda" and torch.cuda.is_bf16_supported()) else torch.float32
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute)
        kwargs["device_map"] = {"": local_rank} if device == "cuda" else "cpu"
        kwargs["dtype"] = compute
    elif method == "lora" and device == "cuda":
        kwargs["dtype"] = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        kwargs["dtype"] = torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except ImportError as exc:  # bitsandbytes (or an asked-for attention kernel) missing or unusable here
        if attn_implementation and attn_implementation.startswith("flash") and "flash" in str(exc).lower():
            raise FtpackError(f"Cannot load the base with --attn-implementation {attn_implementation}: {exc}",
                              "Leave --attn-implementation out (transformers' default attention).") from None
        raise FtpackError(f"Cannot load the base for {method}: {exc}",
                          "Install bitsandbytes, or use --method lora.") from None
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise bad_input(f"{path} needs its own Python code to load.",
                            "Pass --trust-remote-code if you trust the source.") from None
        if attn_implementation and "attention implementation" in str(exc):
            raise bad_input(f"--attn-implementation {attn_implementation}: {str(exc).splitlines()[0]}",
                            "Leave --attn-implementation out: transformers then picks what the model supports.") from None
        raise
    model.config.use_cache = False  # the KV cache is useless (and warned about) while training
    return model


# -- LoRA --------------------------------------------------------------------------------

def decoder_blocks(model) -> tuple[str, Any]:
    """(qualified name, ModuleList) of the transformer blocks: the ModuleList whose length
    is the config's number of layers (``model.layers``, ``transformer.h``, …)."""
    import torch.nn as nn

    n_layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    best: tuple[str, Any] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and (n_layers is None or len(module) == n_layers):
            if best is None or len(name) < len(best[0]):
                best = (name, module)
    if best is None:
        raise FtpackError(f"Cannot find the decoder blocks of {type(model).__name__}.",
                          "Use --method full, or --target-modules for LoRA.")
    return best


def _is_linear(module) -> bool:
    import torch.nn as nn

    if isinstance(module, nn.Linear):
        return True
    return type(module).__name__ in ("Conv1D", "Linear4bit", "Linear8bitLt")


def linear_module_names(model) -> dict[str, list[str]]:
    """Leaf names of linear layers: {"blocks": [...], "other": [...]} (sorted, unique)."""
    blocks_name, _ = decoder_blocks(model)
    inside, outside = set(), set()
    for name, module in model.named_modules():
        if not _is_linear(module) or "lora_" in name:
            continue
        leaf = name.rsplit(".", 1)[-1]
        (inside if name.startswith(blocks_name + ".") else outside).add(leaf)
    return {"blocks": sorted(inside), "other": sorted(outside - inside)}


def _output_head_name(model) -> str | None:
    """Leaf name of the model's output projection (``lm_head`` for most), or None."""
    head = model.get_output_embeddings()
    if head is None:
        return None
    return next((name.rsplit(".", 1)[-1] for name, module in model.named_modules() if module is head), None)


def lora_target_modules(model, requested: Sequence[str] | None = None) -> list[str]:
    """LoRA targets: every linear projection inside the decoder blocks, or the user's list
    (each name must be a linear layer of this model; the error lists the valid ones)."""
    names = linear_module_names(model)
    if not requested:
        if not names["blocks"]:
            raise FtpackError(f"No linear layers found in the decoder blocks of {type(model).__name__}.",
                              "Pass --target-modules, or use --method sft/full.")
        return names["blocks"]
    wanted = [t.strip() for item in requested for t in str(item).split(",") if t.strip()]
    head = _output_head_name(model)
    if head in wanted:
        raise bad_input(f"--target-modules: {head} is the LM head, and a LoRA adapter there would never learn: the "
                        "training loss is computed from the head's own weight in chunks (TRL's fused LM head), "
                        "which bypasses an adapter on it.",
                        f"Leave {head} out; to train the head use --method sft (the top blocks, the final norm and "
                        "the head learn).")
    valid = names["blocks"] + [n for n in names["other"] if n != head]
    wrong = [t for t in wanted if t not in valid and t != "all-linear"]
    if wrong:
        raise bad_input(f"--target-modules: {', '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} not a linear "
                        f"layer of {type(model).__name__}.",
                        f"Valid names: {', '.join(valid)}.")
    if "all-linear" in wanted:
        return names["blocks"]
    return wanted


def add_lora(model, *, quantized: bool, r: int, alpha: int, dropout: float,
             target_modules: Sequence[str] | None, dora: bool, gradient_checkpointing: bool, bf16_base: bool = False):
    """Wrap ``model`` with PEFT LoRA (or DoRA) adapters on the chosen projections.
    ``bf16_base``: a 4-bit base keeps its bf16 embeddings, norms and head (no fp32 copies;
    :func:`ftpack.training.cuda_speed.prepare_4bit_for_training`)."""
    from peft import LoraConfig, get_peft_model

    from ftpack.training.cuda_speed import prepare_4bit_for_training

    targets = lora_target_modules(model, target_modules)
    if quantized:
        model = prepare_4bit_for_training(model, gradient_checkpointing=gradient_checkpointing, keep_dtype=bf16_base)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        use_dora=dora, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


# -- SFT (partial fine-tuning) -----------------------------------------------------------

def freeze_for_sft(model, trainable_layers: int, *, train_embeddings: bool = False,
                   reporter: Reporter | None = None) -> list[str]:
    """Freeze everything except the top ``trainable_layers`` blocks, the final norm and the
    LM head (and the input embeddings when asked). Returns the trainable parameter names."""
    blocks_name, blocks = decoder_blocks(model)
    if trainable_layers > len(blocks):
        raise bad_input(f"--trainable-layers {trainable_layers}: the model has only {len(blocks)} blocks.",
                        "Use a smaller number, or --method full.")
    for p in model.parameters():
        p.requires_grad_(False)
    for block in list(blocks)[len(blocks) - trainable_layers:]:
        for p in block.parameters():
            p.requires_grad_(True)
    norm = _final_norm(model, blocks_name)
    if norm is not None:
        for p in norm.parameters():
            p.requires_grad_(True)
    head = model.get_output_embeddings()
    if head is not None:
        for p in head.parameters():
            p.requires_grad_(True)
    embeddings = model.get_input_embeddings()
    tied = head is not None and embeddings is not None and head.weight is embeddings.weight
    if tied and not train_embeddings and reporter is not None:
        reporter.warn("The LM head shares its weights with the input embeddings in this model, so the "
                      "embeddings are trained too.")
    if train_embeddings and embeddings is not None:
        for p in embeddings.parameters():
            p.requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _final_norm(model, blocks_name: str):
    """The norm after the last block (``model.norm``, ``transformer.ln_f``, …)."""
    parent_name = blocks_name.rsplit(".", 1)[0] if "." in blocks_name else ""
    parent = model.get_submodule(parent_name) if parent_name else model
    for attr in ("norm", "final_layernorm", "ln_f", "final_layer_norm", "norm_f"):
        module = getattr(parent, attr, None)
        if module is not None:
            return module
    return None


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
