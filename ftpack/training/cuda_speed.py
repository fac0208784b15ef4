"""Training on a CUDA GPU: the fast path, chosen per run and recorded with its reasons.

:mod:`ftpack.training.speed` is the CPU's counterpart. On a GPU the plain TRL + PEFT +
bitsandbytes recipe spends time and memory on things that do not change what is learned;
each piece below is chosen automatically on CUDA (``auto``), has a flag to turn it off or
on, and lands in build.json's train metrics (``fast_path``) with why:

- **Liger Kernel's layer kernels** (``--use-liger-kernel``, TrainingArguments' name):
  fused Triton RMSNorm, RoPE and SwiGLU for the model types Liger supports. Its fused
  linear cross-entropy is not used: TRL's fused LM head already computes the loss in
  chunks without the whole logits tensor (and TRL refuses Liger's). Applied by ftpack
  itself (TRL's ``use_liger_kernel`` is deprecated in favour of Hub kernels, which would be
  downloaded at run time); Liger's module-wide patches are undone after training
  (:func:`apply_liger`), so later stages in the same process run transformers' own code.
- **Padding-free batches** (``--padding-free``, TRL's name): a batch's examples are one row
  with position ids restarting at each example, so no step computes on padding. The same
  examples per step as padded batches (this is not ``--packing``, which changes how many
  examples a step sees); TRL still truncates each to ``--max-seq-length``. Only for model
  types where every layer attends (:data:`PADDING_FREE_MODEL_TYPES`, each proven to keep
  its examples apart): recurrent, convolution and linear-attention layers would carry
  state from one example into the next. Auto only with a variable-length attention
  (flash-attention, flex attention): SDPA or eager would compute the row's whole masked
  (tokens × tokens) square, more work than length-grouped padded batches.
- **Attention** (``--attn-implementation``, transformers' name): ``flash_attention_2``
  when ``flash-attn`` imports on an Ampere-or-newer GPU, else transformers' default for the
  model (SDPA where it supports it). Nothing is fetched at run time (no Hub kernels).
- **A bf16 4-bit base** (``--qlora-bf16-base``): PEFT's ``prepare_model_for_kbit_training``
  keeps fp32 copies of the embeddings, norms and LM head (about 1 GiB for a 7B model), and
  with them an fp32 residual stream; :func:`prepare_4bit_for_training` does the rest of its
  work (freeze, gradient checkpointing) and keeps them bf16, as the base runs in bf16
  inference. Not bit-identical: the loss and LoRA gradients match PEFT's within bf16's
  precision (tests/test_cuda_speed.py).
- **The CUDA allocator with expandable segments** (``PYTORCH_CUDA_ALLOC_CONF``, unless the
  user set it): batches of changing length reuse one growing segment instead of reserving
  new blocks, which is what the multi-second steps seen when length-grouped batches change
  shape pointed to.

``torch.compile`` is not part of the auto path on a GPU until the benchmark shows it pays
there (``--torch-compile`` still asks for it). ``benchmarks/qlora_gpu.py`` measures the
whole and each piece (``--variant``) against the plain TRL script, side by side, and
``benchmarks/gpu_checks.py`` checks each kernel against the plain computation on the GPU.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from ftpack.core.errors import bad_input

#: Model types whose padding-free rows keep each example to itself, proven on tiny models of
#: each (tests/test_cuda_speed.py: a packed row's logits equal each example's alone, with
#: SDPA, eager and flex attention): every layer attends, and the position ids restarting at
#: each example become the mask. Hybrids (Mamba, short convolutions, linear attention:
#: nemotron_h, lfm2, qwen3_5...) carry state from one example into the next: never.
PADDING_FREE_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3",
                                      "gemma4_text"})
#: Attention with a variable-length kernel: a padding-free row costs what its examples cost
#: alone. SDPA and eager instead compute the row's whole (tokens × tokens) masked square.
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "flex_attention")
#: The package each flash attention implementation imports.
FLASH_MODULES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}
#: The allocator setting ftpack itself put into the environment (not the user's).
_ALLOC_SET: dict[str, str] = {}
#: What the CUDA allocator is told unless PYTORCH_CUDA_ALLOC_CONF is set.
ALLOC_CONF = "expandable_segments:True"


@dataclass(frozen=True)
class FastPath:
    """The choices for one training run, each with why (build.json: ``fast_path``)."""

    device: str
    liger: bool = False
    liger_why: str = ""
    padding_free: bool = False
    padding_free_why: str = ""
    attention: str | None = None  # None: transformers' default (or the CPU's own, speed.py)
    attention_why: str = ""
    bf16_base: bool = False  # QLoRA: embeddings, norms, LM head stay bf16
    bf16_base_why: str = ""
    alloc_conf: str | None = None
    alloc_conf_why: str = ""

    def as_metrics(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line for the run's output: every piece on a GPU; on a CPU only what was
        asked for ("" when nothing)."""
        def switch(name: str, on: bool, why: str) -> str:
            return f"{name} {'on' if on else 'off'} ({why})"

        if self.device != "cuda":
            asked = [switch("Liger", True, self.liger_why) if self.liger else "",
                     switch("padding-free", True, self.padding_free_why) if self.padding_free else "",
                     f"attention {self.attention} ({self.attention_why})" if self.attention else ""]
            return "; ".join(filter(None, asked))
        return "; ".join([switch("Liger", self.liger, self.liger_why),
                          switch("padding-free", self.padding_free, self.padding_free_why),
                          f"attention {self.attention or 'default'} ({self.attention_why})",
                          switch("bf16 4-bit base", self.bf16_base, self.bf16_base_why),
                          f"allocator {self.alloc_conf or 'as set'} ({self.alloc_conf_why})"])


def module_available(name: str) -> bool:
    """Whether ``name`` can be imported here: found, and for a compiled attention kernel
    (flash-attn) really imported, since a build for another torch or CUDA is found but
    fails to load."""
    try:
        if importlib.util.find_spec(name) is None:
            return False
    except (ImportError, ValueError):
        return False
    if name not in FLASH_MODULES.values():
        return True
    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001 - any failure to load means it cannot be used
        return False
    return True


def liger_model_types() -> frozenset[str]:
    """The model types Liger Kernel has kernels for (empty when it is not installed)."""
    if not module_available("liger_kernel"):
        return frozenset()
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    return frozenset(MODEL_TYPE_TO_APPLY_LIGER_FN)


def plan_fast_path(settings: Any, *, device: str, model_type: str | None, bf16: bool,
                   available: Callable[[str], bool] = module_available,
                   liger_types: Iterable[str] | Callable[[], Iterable[str]] = liger_model_types,
                   gpu_capability: tuple[int, int] | None = None,
                   environ: dict[str, str] | None = None) -> FastPath:
    """The fast path for ``settings`` (TrainSettings, resolved: method known) on ``device``.

    Pure: what is installed (``available``), the model types Liger supports
    (``liger_types``), the GPU's compute capability and the environment are inputs. Each
    of ``use_liger_kernel``, ``padding_free`` and ``attn_implementation`` is None for auto;
    an explicit choice is kept, or refused with a hint when it cannot run here."""
    environ = os.environ if environ is None else environ
    cuda = device == "cuda"
    method = settings.method

    # -- Liger ----------------------------------------------------------------------------
    asked = settings.use_liger_kernel
    if asked is False:
        liger, liger_why = False, "off (--no-use-liger-kernel)"
    elif not cuda:
        if asked:
            raise bad_input("--use-liger-kernel needs a CUDA GPU: Liger's kernels are Triton GPU kernels.",
                            "Drop --use-liger-kernel on this machine.")
        liger, liger_why = False, "no CUDA GPU (Triton GPU kernels)"
    elif not available("liger_kernel"):
        if asked:
            raise bad_input("--use-liger-kernel: the liger-kernel package is not installed.",
                            "pip install liger-kernel (it is in ftpack's tested set: bash scripts/setup.sh).")
        liger, liger_why = False, "liger-kernel is not installed"
    else:
        types = frozenset(liger_types() if callable(liger_types) else liger_types)
        if model_type not in types:
            if asked:
                raise bad_input(f"--use-liger-kernel: Liger Kernel has no kernels for model type {model_type!r}.",
                                "Drop --use-liger-kernel for this base.")
            liger, liger_why = False, f"Liger Kernel has no kernels for model type {model_type!r}"
        else:
            liger, liger_why = True, ("as asked" if asked else
                                      f"CUDA: fused RMSNorm, RoPE and SwiGLU for {model_type}")

    # -- attention ------------------------------------------------------------------------
    capable = (gpu_capability or (0, 0)) >= (8, 0)
    attention = settings.attn_implementation
    if attention is not None:
        attention_why = "as asked"
        module = FLASH_MODULES.get(attention)
        if attention in VARLEN_ATTENTION and not cuda:
            raise bad_input(f"--attn-implementation {attention} cannot train on a CPU (its backward is GPU-only).",
                            "Leave --attn-implementation out on this machine.")
        if module and not available(module):
            raise bad_input(f"--attn-implementation {attention}: its package ({module}) is not installed or does "
                            "not import here.", "Install it, or leave --attn-implementation out.")
    elif not cuda:
        attention_why = "CPU: ftpack's own choice (speed.register_cpu_attention) with bf16, else transformers'"
    elif available("flash_attn") and capable:
        attention, attention_why = "flash_attention_2", "flash-attn is installed (variable-length kernel)"
    else:  # None: transformers' default for the model (SDPA where the model supports it, else eager)
        attention_why = ("transformers' default (flash-attn is not installed)" if capable
                         else "transformers' default (flash-attn needs an Ampere or newer GPU)")

    # -- padding-free ---------------------------------------------------------------------
    asked = settings.padding_free
    proven = model_type in PADDING_FREE_MODEL_TYPES
    if asked is False:
        padding_free, padding_free_why = False, "off (--no-padding-free)"
    elif settings.packing:
        padding_free, padding_free_why = False, "--packing rows are padding-free already"
    elif not proven:
        if asked:
            raise bad_input(f"--padding-free is not proven for model type {model_type!r}: its examples would have "
                            "to be kept apart inside one row, which position ids do for attention layers only "
                            "(recurrent, convolution and linear-attention layers carry state across them).",
                            f"Drop --padding-free for this base (proven for: "
                            f"{', '.join(sorted(PADDING_FREE_MODEL_TYPES))}).")
        padding_free, padding_free_why = False, f"not proven for model type {model_type!r}"
    elif asked:
        padding_free, padding_free_why = True, "as asked"
    elif not cuda:
        padding_free, padding_free_why = False, ("CPU: measured slower than length-grouped padded batches "
                                                 "(no variable-length attention kernel)")
    elif settings.per_device_train_batch_size < 2:
        padding_free, padding_free_why = False, "a batch of one example has no padding"
    elif attention not in VARLEN_ATTENTION:
        padding_free, padding_free_why = False, (
            "no variable-length attention: with SDPA or eager the row's block-diagonal mask is computed whole "
            "(install flash-attn, or ask: --padding-free --attn-implementation flex_attention)")
    else:
        padding_free, padding_free_why = True, f"CUDA: one row per batch, no padding; {attention} keeps examples apart"

    # -- the 4-bit base's other weights -------------------------------------------------------
    asked = settings.qlora_bf16_base
    if method != "qlora":
        bf16_base, bf16_base_why = False, f"not QLoRA ({method})"
    elif asked is False:
        bf16_base, bf16_base_why = False, "off (--no-qlora-bf16-base): PEFT's fp32 copies"
    elif not (cuda and bf16):
        if asked:
            raise bad_input("--qlora-bf16-base needs bf16 compute on a CUDA GPU.", "Drop --qlora-bf16-base here.")
        bf16_base, bf16_base_why = False, "compute is not bf16: PEFT's fp32 copies"
    else:
        bf16_base, bf16_base_why = True, "as asked" if asked else (
            "embeddings, norms and LM head stay bf16 (PEFT would keep fp32 copies; the residual stream is then "
            "bf16, as in the base's own bf16 inference)")

    # -- allocator ------------------------------------------------------------------------
    current = environ.get("PYTORCH_CUDA_ALLOC_CONF")
    if not cuda:
        alloc, alloc_why = None, "CPU"
    elif current and current != _ALLOC_SET.get("value"):
        alloc, alloc_why = None, "PYTORCH_CUDA_ALLOC_CONF is set: left as it is"
    else:
        alloc, alloc_why = ALLOC_CONF, "batches of changing length reuse one growing segment"

    return FastPath(device=device, liger=liger, liger_why=liger_why, padding_free=padding_free,
                    padding_free_why=padding_free_why, attention=attention, attention_why=attention_why,
                    bf16_base=bf16_base, bf16_base_why=bf16_base_why, alloc_conf=alloc, alloc_conf_why=alloc_why)


def gpu_capability() -> tuple[int, int] | None:
    """The first CUDA GPU's compute capability, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability(0))  # type: ignore[return-value]


def use_alloc_conf(path: FastPath) -> str | None:
    """Tell the CUDA allocator ``path.alloc_conf``; returns how ("environment" before CUDA
    starts, "runtime" once it has: an earlier step, such as asking the GPU's name, may
    have started it, and the allocator reads the variable only then), or None.

    Expandable segments apply to the segments the allocator creates from then on, so
    setting them at run time (torch's own setter) covers the training steps."""
    if not path.alloc_conf:
        return None
    import torch

    if not torch.cuda.is_initialized():
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = _ALLOC_SET["value"] = path.alloc_conf
        return "environment"
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None)
    if setter is None:  # pragma: no cover - torch < 2.9
        setter = getattr(torch._C, "_cuda_cudaCachingAllocator_set_allocator_settings", None)
    if setter is None:  # pragma: no cover
        return None
    setter(path.alloc_conf)
    return "runtime"


# -- pieces ------------------------------------------------------------------------------------

def prepare_4bit_for_training(model, *, gradient_checkpointing: bool, keep_dtype: bool):
    """PEFT's ``prepare_model_for_kbit_training`` for a 4-bit base: every weight frozen,
    gradient checkpointing (non-reentrant) when asked. With ``keep_dtype`` the bf16
    embeddings, norms and LM head stay bf16 instead of being copied to fp32 (the residual
    stream is then bf16 too: not bit-identical, within bf16's precision of PEFT's)."""
    from peft import prepare_model_for_kbit_training

    if not keep_dtype:
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                               gradient_checkpointing_kwargs={"use_reentrant": False})
    for param in model.parameters():
        param.requires_grad = False
    if gradient_checkpointing:  # transformers 5 renamed it (the old name warns)
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:  # pragma: no cover - transformers 4.x
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def padding_free_collator(tokenizer):
    """TRL's own collator in padding-free mode: a batch becomes one row, position ids
    restart at each example, labels of every example's first token are masked. Handed to
    SFTTrainer as its collator, so TRL still truncates examples to ``max_length`` (its
    ``padding_free`` argument would require ``max_length=None``)."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)


def apply_liger(model) -> tuple[int, Callable[[], list[str]]]:
    """Liger Kernel's RMSNorm, RoPE and SwiGLU on ``model`` (the transformers model, not
    the PEFT wrapper); not its cross-entropy (TRL's fused LM head computes the loss).

    Returns how many modules now run a Liger forward, and a function that undoes what Liger
    changed beyond this model: it also replaces names in transformers' modeling modules
    (``modeling_llama.LlamaRMSNorm``, ``apply_rotary_pos_emb``...), which every later model
    of that type in the process would pick up (the quantize stage's importance matrix, a
    second build). The function restores them and returns the names it restored."""
    import sys

    from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance

    def modules() -> dict[str, Any]:
        return {name: mod for name, mod in list(sys.modules.items())
                if name.startswith("transformers.") and mod is not None}

    before = {name: dict(vars(mod)) for name, mod in modules().items()}
    _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)
    changed = {}
    for name, mod in modules().items():
        old = before.get(name)
        if old is None:
            continue  # imported by Liger itself: nothing of ours refers to it
        keys = [k for k, v in vars(mod).items() if k not in old or old[k] is not v]
        if keys:
            changed[name] = (mod, {k: old.get(k, _MISSING) for k in keys})

    def restore() -> list[str]:
        done = []
        for name, (mod, values) in changed.items():
            for key, value in values.items():
                if value is _MISSING:
                    vars(mod).pop(key, None)
                else:
                    setattr(mod, key, value)
                done.append(f"{name.rsplit('.', 1)[-1]}.{key}")
        changed.clear()
        return done

    return liger_modules(model), restore


_MISSING = object()


def liger_modules(model) -> int:
    """How many modules of ``model`` run a forward defined by Liger Kernel."""
    count = 0
    for module in model.modules():
        forward = getattr(module, "forward", None)
        code = getattr(getattr(forward, "__func__", forward), "__module__", "") or ""
        if code.startswith("liger_kernel") or type(module).__module__.startswith("liger_kernel"):
            count += 1
    return count
