"""Each piece of ftpack's GPU fast path against the plain computation, on the GPU itself.

tests/test_cuda_speed.py proves on a CPU what runs there (padding-free training equals
padded training, the bf16 4-bit base equals PEFT's preparation, Liger patches the right
modules). Liger's Triton kernels and flash-attention run only on a GPU, so this script
(run by benchmarks/qlora_gpu.py before it times anything, or alone) compares them there:

- Liger RMSNorm, SwiGLU and RoPE vs transformers' Llama modules: forward and input
  gradients, bf16 and fp32;
- a padding-free row vs each example alone (SDPA with the mask derived from position ids,
  and flash_attention_2 when flash-attn is installed): logits;
- a whole training step with the fast path vs the plain path on a tiny Llama: loss.

Each check: ``{"ok": bool, "max_abs_diff": …, "tolerance": …}`` or ``{"skipped": why}``.

    python benchmarks/gpu_checks.py    # prints the checks as JSON; exit 1 if one fails
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def _compare(got, want, tolerance: float) -> dict:
    diff = (got.float() - want.float()).abs().max().item()
    scale = want.float().abs().max().item() or 1.0
    return {"ok": bool(diff <= tolerance * scale), "max_abs_diff": diff, "scale": scale, "tolerance": tolerance}


def _forward_backward(fn, *inputs):
    """(output, gradients of every input) for a random upstream gradient (seeded)."""
    import torch

    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*leaves)
    first = out[0] if isinstance(out, tuple) else out
    torch.manual_seed(1)
    grad = torch.randn_like(first)
    first.backward(grad)
    return first.detach(), [x.grad for x in leaves]


def liger_checks() -> dict:
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama import modeling_llama as llama

    from ftpack.training.cuda_speed import module_available

    if not torch.cuda.is_available():
        return {"liger": {"skipped": "needs a CUDA GPU (Triton GPU kernels)"}}
    if not module_available("liger_kernel"):
        return {"liger": {"skipped": "liger-kernel is not installed"}}
    from liger_kernel.transformers.rms_norm import LigerRMSNorm
    from liger_kernel.transformers.rope import liger_rotary_pos_emb
    from liger_kernel.transformers.swiglu import LigerSwiGLUMLP

    out = {}
    config = LlamaConfig(hidden_size=256, intermediate_size=768, num_attention_heads=4, num_key_value_heads=2,
                         rms_norm_eps=1e-6)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        name = str(dtype).split(".")[-1]
        torch.manual_seed(0)
        x = torch.randn(4, 64, 256, device="cuda", dtype=dtype)
        plain, fused = llama.LlamaRMSNorm(256, eps=1e-6).cuda().to(dtype), LigerRMSNorm(256, eps=1e-6).cuda().to(dtype)
        with torch.no_grad():
            w = torch.randn(256, device="cuda").to(dtype)
            plain.weight.copy_(w)
            fused.weight.copy_(w)
        (a, ga), (b, gb) = _forward_backward(plain, x), _forward_backward(fused, x)
        out[f"rms_norm_{name}"] = _compare(b, a, tol)
        out[f"rms_norm_grad_{name}"] = _compare(gb[0], ga[0], tol * 5)

        torch.manual_seed(0)
        mlp = llama.LlamaMLP(config).cuda().to(dtype)
        fused_mlp = LigerSwiGLUMLP(config).cuda().to(dtype)
        fused_mlp.load_state_dict(mlp.state_dict())
        (a, ga), (b, gb) = _forward_backward(mlp, x), _forward_backward(fused_mlp, x)
        out[f"swiglu_{name}"] = _compare(b, a, tol)
        out[f"swiglu_grad_{name}"] = _compare(gb[0], ga[0], tol * 5)

        q = torch.randn(2, 4, 64, 64, device="cuda", dtype=dtype)
        k = torch.randn(2, 2, 64, 64, device="cuda", dtype=dtype)
        rope = llama.LlamaRotaryEmbedding(config=LlamaConfig(hidden_size=256, num_attention_heads=4)).cuda()
        cos, sin = rope(q, torch.arange(64, device="cuda")[None].expand(2, -1))
        (a, ga), (b, gb) = (_forward_backward(lambda q_, k_: fn(q_, k_, cos, sin)[0], q, k)
                            for fn in (llama.apply_rotary_pos_emb, liger_rotary_pos_emb))
        out[f"rope_{name}"] = _compare(b, a, tol)
        out[f"rope_grad_{name}"] = _compare(gb[0], ga[0], tol * 5)
    return out


def packed_attention_checks() -> dict:
    """A padding-free row of two examples gives each the logits it has alone."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftpack.training.cuda_speed import module_available

    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = {}
    for attention in ("sdpa", "flash_attention_2"):
        if attention == "flash_attention_2" and not (device == "cuda" and module_available("flash_attn")):
            out[f"padding_free_{attention}"] = {"skipped": "flash-attn is not installed (or no GPU)"}
            continue
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             attn_implementation=attention)).to(device, dtype).eval()
        first, second = (torch.randint(0, 512, (1, n), device=device) for n in (37, 29))
        with torch.no_grad():
            alone = [model(input_ids=x, use_cache=False).logits for x in (first, second)]
            positions = torch.cat([torch.arange(37), torch.arange(29)]).to(device)[None]
            packed = model(input_ids=torch.cat([first, second], 1), position_ids=positions, use_cache=False).logits
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
        both = _compare(packed, torch.cat(alone, 1), tol)
        out[f"padding_free_{attention}"] = both
    return out


def training_step_check() -> dict:
    """One optimizer step of ftpack's QLoRA on a tiny Llama, fast path on vs every piece
    off: the same loss (bf16 tolerances)."""
    import tempfile

    import torch

    from ftpack.core.report import silenced
    from ftpack.training.train import train
    from test_train import _conversations
    from tiny_model import build_tiny_llama

    if not torch.cuda.is_available():
        return {"training_step": {"skipped": "the CPU's equality tests are tests/test_cuda_speed.py"}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = build_tiny_llama(tmp / "base")
        data = tmp / "train.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in _conversations()), encoding="utf-8")
        losses, paths = {}, {}
        for fast in (True, False):
            off = {} if fast else dict(use_liger_kernel=False, padding_free=False, attn_implementation="eager")
            with silenced():
                result = train(base, data, tmp / f"out-{fast}", method="qlora", max_steps=2,
                               per_device_train_batch_size=4, learning_rate=2e-3, lora_dropout=0.0, save_steps=100,
                               resume=False, **off)
            losses[fast], paths[fast] = result.first_loss, result.metrics["fast_path"]
    diff = abs(losses[True] - losses[False])
    return {"training_step": {"ok": diff <= 2e-2 * abs(losses[False]), "loss_fast": losses[True],
                              "loss_plain": losses[False], "fast_path": paths[True]}}


def run_checks() -> dict:
    out = {}
    for check in (liger_checks, packed_attention_checks, training_step_check):
        try:
            out.update(check())
        except Exception as exc:  # a check that breaks is a finding, not the end of the benchmark
            out[check.__name__] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return out


def main() -> int:
    checks = run_checks()
    print(json.dumps(checks, indent=2))
    return 0 if all(c.get("ok", True) for c in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
