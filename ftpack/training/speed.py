"""Training near the CPU's limit: precision, threads, attention and a lean LM head.

Measured on the project's 2-core machines (SmolLM2-135M, LoRA r16, batches of 8 chat
examples; benchmarks/train_throughput.py and docs/benchmarks.md "Training speed on CPU" have the figures):

- **bf16 autocast** where the CPU multiplies bf16 natively (AVX512-BF16 / AMX): there its
  bf16 matmuls ran 4-7x faster than fp32. LoRA weights, their gradients and the AdamW
  state stay fp32 (autocast only lowers the matmuls). :func:`resolve_precision` picks it
  for ``--precision auto`` only after a short matmul check on the machine itself.
- **Frozen weights stored in bf16** (:func:`prepare_lora_for_bf16_autocast`): autocast
  casts every frozen fp32 projection to bf16 on each use anyway, so storing it in bf16
  gives bit-identical matmuls at half the memory, without the per-step casts.
- **Attention** (:func:`register_cpu_attention`): torch's CPU flash-attention backward is
  about 2x slower in bf16 than in fp32 at chat lengths, while plain bf16 matmuls use the
  bf16 units: eager matmul attention for small score matrices, SDPA in fp32 otherwise.
- **LM head** (:func:`install_cpu_lm_head`): TRL's fused head scores every position on a
  CPU and runs its backward GEMM in fp32. Here only the positions with a label (the
  assistant's tokens, about half of a chat) go through the 49k-word head, in row chunks,
  and each row's gradient is computed in the same pass as its log-probability (Liger
  Kernel's approach), so the logits are computed once and never held whole. The frozen
  head's bf16 copy is made once, not on every step (28M values for SmolLM2).
- **Threads**: one per physical core (:func:`use_physical_cores`).
- Not used: padding-free batches (TRL ``padding_free``/BFD packing). Without a
  variable-length attention kernel on CPU the packed row attends over a block-diagonal
  mask of the whole batch, which measured ~15% slower than padded batches grouped by
  length (what ftpack uses unless ``--packing``).
"""

from __future__ import annotations

import os
import time
from typing import Any

from ftpack.core.cpu import physical_cores

#: Name under which :func:`register_cpu_attention` registers with transformers.
CPU_ATTENTION = "ftpack_cpu"
#: Largest score matrix (batch x heads x queries x keys) attended eagerly: 8 chat
#: examples of 128 tokens with 9 heads fit; longer batches use SDPA (no T² memory).
EAGER_MAX_SCORES = 2**21
#: Bytes of fp32 logits one chunk of rows may hold (rows = this / (4 * vocabulary)).
LOGITS_CHUNK_BYTES = 32 * 2**20
#: bf16 must beat fp32 by this factor in the matmul check to be chosen automatically.
BF16_MIN_SPEEDUP = 1.5


# -- threads ---------------------------------------------------------------------------------

def use_physical_cores() -> int:
    """Set torch's intra-op threads to the physical cores unless the user chose a number
    (``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``). Returns the thread count in use."""
    import torch

    if not (os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS")):
        torch.set_num_threads(physical_cores())
    return torch.get_num_threads()


# -- precision -------------------------------------------------------------------------------

def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: the CPU multiplies bf16 in hardware (torch's own check)."""
    import torch

    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def matmul_gflops(dtype: Any, *, m: int = 1024, k: int = 576, n: int = 1536, seconds: float = 0.2,
                  cpu_time: bool = False) -> float:
    """Attained GFLOP/s of an ``m×k @ k×n`` matmul (default: an MLP-shaped one) on this
    machine's current threads. ``cpu_time``: per CPU-second of this process, which other
    processes on a shared machine disturb far less than the wall clock."""
    import torch

    clock = time.process_time if cpu_time else time.perf_counter
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    for _ in range(2):
        a @ b
    reps, start = 0, clock()
    while True:
        a @ b
        reps += 1
        elapsed = clock() - start
        if elapsed >= seconds and reps >= 3:
            return 2 * m * k * n * reps / max(elapsed, 1e-9) / 1e9


def resolve_precision(precision: str | None, device: str) -> tuple[str, str]:
    """(precision, why) for training: ``auto`` becomes bf16 on a GPU that supports it
    (else fp16), and on a CPU bf16 only where it is native *and* measured faster here;
    otherwise fp32. Explicit choices are kept (fp16 needs a GPU)."""
    from ftpack.core.errors import bad_input

    precision = (precision or "auto").lower()
    if precision == "fp16" and device != "cuda":
        raise bad_input("--precision fp16 needs a CUDA GPU.", "Use --precision auto, bf16 or fp32.")
    if precision != "auto":
        return precision, "as asked"
    import torch

    if device == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "the GPU supports bf16"
        return "fp16", "the GPU has no bf16"
    if not cpu_has_native_bf16():
        return "fp32", "this CPU has no native bf16 (AVX512-BF16/AMX)"
    fp32 = matmul_gflops(torch.float32, seconds=0.05, cpu_time=True)
    bf16 = matmul_gflops(torch.bfloat16, seconds=0.05, cpu_time=True)
    if bf16 < BF16_MIN_SPEEDUP * fp32:
        return "fp32", f"bf16 matmuls are not faster here ({bf16:.0f} vs {fp32:.0f} GFLOP/s fp32)"
    return "bf16", (f"native bf16 CPU: bf16 matmuls {bf16 / fp32:.1f}x fp32 here; "
                    "LoRA weights and optimizer state stay fp32")


# -- model preparation ---------------------------------------------------------------------

def prepare_lora_for_bf16_autocast(model, *, dora: bool = False) -> int:
    """Make a PEFT LoRA model cheaper to run under bf16 autocast, without changing a
    matmul's result; returns how many frozen weights now live in bf16.

    - The frozen weight of each LoRA-wrapped projection is stored in bf16: autocast casts
      each fp32 weight to bf16 before its matmul anyway, so the product is the same,
      without the per-step cast and at half the memory. Not with DoRA, whose weight norm
      is computed from the weight outside a matmul. Trainable tensors (LoRA A/B), norms
      and embeddings stay fp32.
    - PEFT's cast of each LoRA input to the adapter's fp32 is turned off: autocast casts
      it straight back to bf16 for the adapter's matmul.
    """
    import torch

    count = 0
    for name, module in model.named_modules():
        base = getattr(module, "base_layer", None)
        if not isinstance(base, torch.nn.Linear) or "lora_" in name:
            continue
        if hasattr(module, "cast_input_dtype_enabled") or hasattr(module, "lora_A"):
            module.cast_input_dtype_enabled = False
        weight = base.weight
        if dora or weight.requires_grad or weight.dtype != torch.float32:
            continue
        weight.data = weight.data.to(torch.bfloat16)
        if base.bias is not None and not base.bias.requires_grad:
            base.bias.data = base.bias.data.to(torch.bfloat16)
        count += 1
    if count:
        release_weight_file(model)
    return count


def release_weight_file(model) -> None:
    """Copy the frozen fp32 tensors left (embeddings, norms) out of the weight file.

    transformers maps the safetensors file into memory and uses fp32 tensors straight
    from the mapping. Once the projections are copies in bf16, those few tensors are all
    that keep the mapping — and every page of it read while loading — resident (about
    0.4 GB of the 0.54 GB file for SmolLM2-135M); own copies of them (0.11 GB) let it go."""
    import torch

    for tensor in [*model.parameters(), *model.buffers()]:  # each once: tied weights are one tensor
        if not tensor.requires_grad and tensor.dtype == torch.float32:
            tensor.data = tensor.data.clone()


def _eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **_kwargs):
    """Attention as plain matmuls + an fp32 softmax (transformers' ``eager``), for any
    mask ``sdpa_mask`` gives: boolean (True = attend), additive float, or None (causal)."""
    import torch

    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scale
    q_len, k_len = scores.shape[-2:]
    if attention_mask is None:
        attention_mask = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril(k_len - q_len)
    if attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    else:
        scores = scores + attention_mask
    probs = torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def _additive_mask(attention_mask, query):
    """``sdpa_mask``'s mask (boolean, True = attend; or None = plainly causal) as the additive
    float mask eager attention code expects."""
    import torch

    if attention_mask is not None and attention_mask.dtype != torch.bool:
        return attention_mask
    q_len = query.shape[-2]
    if attention_mask is None:
        attention_mask = torch.ones(q_len, q_len, dtype=torch.bool, device=query.device).tril()[None, None]
    zero = torch.zeros((), dtype=query.dtype, device=query.device)
    return torch.where(attention_mask, zero, torch.finfo(query.dtype).min)


def model_eager_attention(module):
    """The ``eager_attention_forward`` of the modeling file that defines ``module`` (every
    transformers model has one, with its own extras such as Gemma 2's soft-capping);
    transformers' generic one for a module whose file has none."""
    import sys

    found = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if found is None:
        from transformers.models.llama.modeling_llama import eager_attention_forward as found
    return found


def register_cpu_attention() -> str:
    """Register (once) the attention for bf16 training on CPU; returns its name for
    ``attn_implementation``.

    torch's CPU flash-attention backward is slow in bf16 (about 2x its fp32 time at chat
    lengths), while plain bf16 matmuls use the CPU's bf16 units. So: eager matmul attention
    while its score matrix is small (≤ :data:`EAGER_MAX_SCORES` elements per layer, so its
    memory stays bounded), else SDPA computed in fp32. Same masks as ``sdpa``. Attention
    that SDPA cannot express (soft-capping, sinks) runs the model's own eager code.
    """
    import torch
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def cpu_attention(module, query, key, value, attention_mask, *args, **kwargs):
        batch, heads, q_len, _ = query.shape
        plain = not any(kwargs.get(k) is not None for k in ("softcap", "s_aux", "sinks", "position_bias"))
        if not plain:  # soft-capped scores (Gemma 2), attention sinks …: the model's own eager code,
            additive = _additive_mask(attention_mask, query)  # which adds a float mask
            return model_eager_attention(module)(module, query, key, value, additive, *args, **kwargs)
        if not args and batch * heads * q_len * key.shape[2] <= EAGER_MAX_SCORES:
            return _eager_attention(module, query, key, value, attention_mask, **kwargs)
        dtype = query.dtype
        if dtype == torch.float32:
            return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(),
                                              attention_mask, *args, **kwargs)
        return out.to(dtype), weights

    AttentionInterface.register(CPU_ATTENTION, cpu_attention)
    AttentionMaskInterface.register(CPU_ATTENTION, sdpa_mask)
    return CPU_ATTENTION


# -- LM head ---------------------------------------------------------------------------------

def _label_log_probs():
    """The autograd function (built on first use, so importing this module stays light)."""
    import torch

    class LabelLogProbs(torch.autograd.Function):
        """log p(label) of hidden rows through the LM head ``weight``, in row chunks.

        Each chunk's logits are computed once, in the autocast dtype with fp32
        softmax statistics, and turned right away into the row's gradient
        ``(onehot - p) @ weight`` (saved: rows × hidden, not rows × vocabulary).
        Because ``log p`` of a row depends only on that row, the backward is the saved
        gradient times the incoming per-row gradient. Entropy and top-1 come out for
        TRL's metrics, without gradient.
        """

        @staticmethod
        def forward(ctx, hidden, weight, labels, chunk_rows):
            dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else hidden.dtype
            rows, width = hidden.shape
            need_grad = ctx.needs_input_grad[0]
            log_probs = torch.empty(rows, dtype=torch.float32)
            entropy = torch.empty(rows, dtype=torch.float32)
            top1 = torch.empty(rows, dtype=torch.bool)
            grad = torch.empty(rows, width, dtype=torch.float32) if need_grad else None
            with torch.autocast("cpu", enabled=False), torch.no_grad():
                w = weight.detach().to(dtype)  # a no-op for the head's kept copy (install_cpu_lm_head)
                for start in range(0, rows, chunk_rows):
                    end = min(rows, start + chunk_rows)
                    target = labels[start:end].unsqueeze(1)
                    z = torch.mm(hidden[start:end].detach().to(dtype), w.t()).float()
                    top1[start:end] = z.argmax(dim=1) == target.squeeze(1)
                    z.sub_(torch.logsumexp(z, dim=1, keepdim=True))  # log p
                    log_probs[start:end] = z.gather(1, target).squeeze(1)
                    p = z.exp()
                    entropy[start:end] = -(p * z).sum(dim=1)
                    if need_grad:
                        p.neg_().scatter_add_(1, target, torch.ones_like(target, dtype=p.dtype))  # onehot - p
                        grad[start:end] = torch.mm(p.to(dtype), w).float()
            ctx.save_for_backward(grad if need_grad else None)
            ctx.hidden_dtype = hidden.dtype
            ctx.mark_non_differentiable(entropy, top1)
            return log_probs, entropy, top1

        @staticmethod
        def backward(ctx, grad_log_probs, _grad_entropy, _grad_top1):
            (grad,) = ctx.saved_tensors
            if grad is None or grad_log_probs is None:
                return None, None, None, None
            return (grad_log_probs.unsqueeze(1) * grad).to(ctx.hidden_dtype), None, None, None

    return LabelLogProbs


_FUNCTION: Any = None


def label_log_probs(hidden, weight, labels, chunk_rows: int | None = None):
    """(log p(label), entropy, is_top1) per row of ``hidden`` (rows × hidden size) through
    the LM head ``weight`` (vocabulary × hidden size); differentiable in ``hidden``."""
    global _FUNCTION
    if _FUNCTION is None:
        _FUNCTION = _label_log_probs()
    if chunk_rows is None:
        chunk_rows = max(16, LOGITS_CHUNK_BYTES // (4 * weight.shape[0]))
    return _FUNCTION.apply(hidden, weight, labels, int(chunk_rows))


def lm_head_supported(model) -> bool:
    """A plain ``hidden @ W.T`` head: no bias, scaling or soft-capping, no MoE router
    loss, text-only config. Others keep TRL's own fused head."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if text is not config:
        return False
    head = model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        return False
    for attr in ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                 "logits_scaling"):
        if getattr(text, attr, None) not in (None, 1, 1.0):
            return False
    return not getattr(text, "output_router_logits", False)


def install_cpu_lm_head(model) -> bool:
    """Replace TRL's fused LM head (``model(..., fused_lm_head=True)``, added by
    ``SFTTrainer``) on a CPU model with :func:`label_log_probs`. ``model``: the
    transformers model (under PEFT: ``get_base_model()``). Returns whether it did: not
    when TRL has no fused head, the model is not on the CPU or its head is not plain."""
    import types

    import torch

    try:
        from trl.trainer.utils import FusedCausalLMOutput
    except ImportError:  # pragma: no cover - older TRL computes the loss from the logits
        return False
    head = model.get_output_embeddings()
    if head is None or head.weight.device.type != "cpu" or not lm_head_supported(model):
        return False
    previous = model.forward
    kept: list = []  # [the weight (keeps its storage), its version, dtype, its copy in dtype]

    def lowered(weight):
        """The frozen head in the autocast dtype, made once instead of on every step (the
        same size as the copy each step made and dropped), and made again when the weight is
        replaced or changed in place through autograd's view of it (``copy_``,
        ``load_state_dict``; a change through ``.data`` bumps no version and is not seen)."""
        if not torch.is_autocast_enabled("cpu"):
            return weight
        dtype = torch.get_autocast_dtype("cpu")
        if not (kept and kept[0].data_ptr() == weight.data_ptr() and kept[0].shape == weight.shape
                and kept[1] == weight._version and kept[2] == dtype):
            kept[:] = [weight.detach(), weight._version, dtype, weight.detach().to(dtype)]
        return kept[3]

    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None,
                **kwargs):
        weight = self.get_output_embeddings().weight
        if not fused_lm_head or weight.requires_grad or type(weight.data) is not torch.Tensor:  # trained / DTensor
            return previous(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                            num_items_in_batch=num_items_in_batch, **kwargs)

        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        if shift_labels is None:
            hidden, labels = hidden[:, :-1], labels[:, 1:]
        else:
            labels = shift_labels
        mask = labels != -100
        log_probs, entropy, top1 = label_log_probs(hidden[mask], lowered(weight), labels[mask])
        per_token = [torch.zeros(mask.shape, dtype=x.dtype).masked_scatter(mask, x) for x in (log_probs, entropy, top1)]
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-per_token[0].sum() / count, log_probs=per_token[0], entropy=per_token[1],
                                   is_top1=per_token[2], label_mask=mask)

    model.forward = types.MethodType(forward, model)
    return True
