"""Training on a CUDA GPU: the fast path, chosen per run and recorded with its reasons.

:mod:`ftpack.training.speed` is the CPU's counterpart. On a GPU the plain TRL + PEFT +
bitsandbytes recipe spends its time on things that do not change what is learned; each
piece below removes one of them, is chosen automatically on CUDA (``auto``), can be
turned off by its flag, and lands in build.json's train metrics (``fast_path``) with why:

- **Liger Kernel's layer kernels** (``--use-liger-kernel``, TrainingArguments' name):
  fused Triton RMSNorm, RoPE and SwiGLU for the model types Liger supports. Its fused
  linear cross-entropy is not used: TRL's fused LM head already computes the loss in
  chunks without the whole logits tensor (and TRL refuses Liger's). Applied by ftpack
  itself (TRL's ``use_liger_kernel`` is deprecated in favour of Hub kernels, which would be
  downloaded at run time).
- **Padding-free batches** (``--padding-free``, TRL's name): a batch's examples are one row
  with position ids restarting at each example, so no step computes on padding. The same
  examples per step as padded batches (this is not ``--packing``, which changes how many
  examples a step sees); TRL still truncates each to ``--max-seq-length``. The attention
  keeps each example to itself: flash-attention's variable-length kernel when ``flash-attn``
  is installed, else transformers' SDPA with the block-diagonal mask it derives from the
  position ids. That mask is (tokens in the batch)² booleans, so auto turns padding-free
  on only where it stays small (:data:`MAX_PACKED_MASK`).
- **Attention** (``--attn-implementation``, transformers' name): ``flash_attention_2``
  when ``flash-attn`` is importable on an Ampere-or-newer GPU, else ``sdpa``. Nothing is
  fetched at run time (no Hub kernels).
- **A bf16 4-bit base** (QLoRA): PEFT's ``prepare_model_for_kbit_training`` makes fp32
  copies of the embeddings, norms and LM head (about 1 GiB for a 7B model), which bf16
  autocast casts back to bf16 at every use; :func:`prepare_4bit_for_training` does the
  rest of its work (freeze, gradient checkpointing) and keeps them in bf16.
- **The CUDA allocator with expandable segments** (``PYTORCH_CUDA_ALLOC_CONF``, unless
  set): batches of changing length reuse one growing segment instead of reserving new
  blocks, which removed the multi-second steps seen when length-grouped batches change
  shape.

``torch.compile`` is not part of the auto path on a GPU until the benchmark shows it pays
there (``--torch-compile`` still asks for it). ``benchmarks/qlora_gpu.py`` measures the
whole and each piece against the plain TRL script, side by side, and checks each kernel
against the plain computation on the GPU.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from ftpack.core.errors import bad_input
#: Largest (tokens per padding-free row)² that auto accepts with a mask-based attention
#: (SDPA, eager): 8 examples × 1024 tokens. Beyond, the mask alone is 64 MiB per forward.
MAX_PACKED_MASK = (8 * 1024) ** 2
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
    """Whether ``name`` can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


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
    attention = settings.attn_implementation
    if attention is not None:
        attention_why = "as asked"
        if attention.startswith("flash_attention") and not available("flash_attn"):
            raise bad_input(f"--attn-implementation {attention}: the flash-attn package is not installed.",
                            "Install flash-attn, or use --attn-implementation sdpa.")
    elif not cuda:
        attention_why = "CPU: ftpack's own choice (speed.register_cpu_attention) with bf16, else transformers'"
    elif available("flash_attn") and (gpu_capability or (0, 0)) >= (8, 0):
        attention, attention_why = "flash_attention_2", "flash-attn is installed (variable-length kernel)"
    else:
        attention = "sdpa"
        attention_why = ("flash-attn is not installed: PyTorch's SDPA" if (gpu_capability or (0, 0)) >= (8, 0)
                         else "PyTorch's SDPA (flash-attn needs an Ampere or newer GPU)")

    # -- padding-free ---------------------------------------------------------------------
    asked = settings.padding_free
    rows = settings.per_device_train_batch_size
    tokens = rows * settings.max_seq_length
    masked = (attention or "sdpa") in ("sdpa", "eager")
    if asked is False:
        padding_free, padding_free_why = False, "off (--no-padding-free)"
    elif settings.packing:
        padding_free, padding_free_why = False, "--packing rows are padding-free already"
    elif asked:  # every attention of transformers keeps the examples apart (varlen kernel or derived mask)
        padding_free, padding_free_why = True, "as asked"
    elif not cuda:
        padding_free, padding_free_why = False, ("CPU: measured slower than length-grouped padded batches "
                                                 "(no variable-length attention kernel)")
    elif rows < 2:
        padding_free, padding_free_why = False, "a batch of one example has no padding"
    elif masked and tokens ** 2 > MAX_PACKED_MASK:
        padding_free, padding_free_why = False, (
            f"{rows} × {settings.max_seq_length} tokens per row would need a {tokens}² attention mask with "
            f"{attention or 'sdpa'} (install flash-attn for its variable-length kernel)")
    else:
        padding_free, padding_free_why = True, (
            f"CUDA: one row per batch, no padding; {attention} keeps the examples apart")

    # -- the 4-bit base's other weights -------------------------------------------------------
    if method != "qlora":
        bf16_base, bf16_base_why = False, f"not QLoRA ({method})"
    elif not (cuda and bf16):
        bf16_base, bf16_base_why = False, "compute is not bf16: PEFT's fp32 copies"
    else:
        bf16_base, bf16_base_why = True, ("embeddings, norms and LM head kept in bf16 (PEFT would copy them to "
                                          "fp32, and autocast cast them back at every use)")

    # -- allocator ------------------------------------------------------------------------
    if not cuda:
        alloc, alloc_why = None, "CPU"
    elif environ.get("PYTORCH_CUDA_ALLOC_CONF") or environ.get("PYTORCH_ALLOC_CONF"):
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
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = path.alloc_conf
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
    embeddings, norms and LM head stay bf16 instead of being copied to fp32: under bf16
    autocast every matmul casts them to bf16 anyway."""
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


def apply_liger(model) -> int:
    """Liger Kernel's RMSNorm, RoPE and SwiGLU on ``model`` (the transformers model, not
    the PEFT wrapper); not its cross-entropy (TRL's fused LM head computes the loss).
    Returns how many modules now run a Liger forward."""
    from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)
    return liger_modules(model)


def liger_modules(model) -> int:
    """How many modules of ``model`` run a forward defined by Liger Kernel."""
    count = 0
    for module in model.modules():
        forward = getattr(module, "forward", None)
        code = getattr(getattr(forward, "__func__", forward), "__module__", "") or ""
        if code.startswith("liger_kernel") or type(module).__module__.startswith("liger_kernel"):
            count += 1
    return count
