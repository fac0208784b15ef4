"""Each piece of ftpack's GPU fast path against the plain computation, on the GPU itself.

tests/test_cuda_speed.py proves on a CPU what runs there (padding-free training equals
padded training, the bf16 4-bit base equals PEFT's preparation, Liger patches the right
modules). Liger's Triton kernels and flash-attention run only on a GPU, so this script
(run by benchmarks/qlora_gpu.py before it times anything, or alone) compares them there:

- Liger RMSNorm, SwiGLU and RoPE vs transformers' Llama modules: forward and input
  gradients, bf16 and fp32;
- a padding-free row vs each example alone (SDPA with the mask derived from position ids,
  flex attention with its block mask, and flash_attention_2 when flash-attn is installed):
  logits (flex attention's backward runs only on a GPU, so its training is measured there);
- a few training steps with the fast path vs every piece off on a tiny Llama, each in its
  own process (Liger's patches are module-wide): loss curve and adapter.

Each check: ``{"ok": bool, "max_abs_diff": …, "tolerance": …}`` or ``{"skipped": why}``.

    python benchmarks/gpu_checks.py [--json]   # the checks as JSON; exit 1 if one fails
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
    for attention in ("sdpa", "flex_attention", "flash_attention_2"):
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


FAST = dict(padding_free=True)  # the rest of the fast path is auto on a GPU
PLAIN = dict(use_liger_kernel=False, padding_free=False, qlora_bf16_base=False)
STEPS = 4


def training_arm(arm: str, base: Path, data: Path, out: Path) -> dict:
    """One arm of :func:`training_check`, in this process: ftpack's QLoRA on ``base``."""
    from ftpack.core.report import silenced
    from ftpack.training.train import train

    with silenced():
        result = train(base, data, out, method="qlora", max_steps=STEPS, per_device_train_batch_size=4,
                       learning_rate=2e-3, lora_dropout=0.0, save_steps=100, resume=False, logging_steps=1,
                       **(FAST if arm == "fast" else PLAIN))
    state = json.loads((out / "trainer_state.json").read_text())
    return {"losses": [h["loss"] for h in state["log_history"] if "loss" in h],
            "fast_path": result.metrics["fast_path"]}


def training_check(force: bool = False) -> dict:
    """``STEPS`` optimizer steps of ftpack's QLoRA on a tiny Llama, the fast path (Liger,
    padding-free, bf16 4-bit base) against every piece off, each in its own process (Liger
    patches module-wide): the same loss curve and adapter within bf16's precision."""
    import subprocess
    import tempfile

    import torch

    from test_train import _conversations
    from tiny_model import build_tiny_llama

    if not (torch.cuda.is_available() or force):  # force: the machinery on a CPU (tests/test_benchmarks.py)
        return {"training": {"skipped": "the CPU's equality tests are tests/test_cuda_speed.py"}}
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = build_tiny_llama(tmp / "base")
        data = tmp / "train.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in _conversations()), encoding="utf-8")
        arms = {}
        for arm in ("fast", "plain"):
            proc = subprocess.run([sys.executable, __file__, "--arm", arm, str(base), str(data), str(tmp / arm)],
                                  capture_output=True, text=True, cwd=ROOT, timeout=600)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ARM ")]
            if proc.returncode or not lines:
                return {"training": {"ok": False, "error": f"{arm}: exit {proc.returncode}",
                                     "tail": (proc.stdout + proc.stderr)[-2000:]}}
            arms[arm] = json.loads(lines[-1][4:])
        adapters = [load_file(str(tmp / arm / "adapter" / "adapter_model.safetensors")) for arm in ("fast", "plain")]
    fast, plain = arms["fast"]["losses"], arms["plain"]["losses"]
    worst = max(abs(a - b) / abs(b) for a, b in zip(fast, plain))
    adapter = max((adapters[0][k].float() - adapters[1][k].float()).norm().item()
                  / max(adapters[1][k].float().norm().item(), 1e-8) for k in adapters[1] if "lora_B" in k)
    return {"training": {"ok": len(fast) == len(plain) == STEPS and worst <= 3e-2 and adapter <= 0.1,
                         "losses_fast": fast, "losses_plain": plain, "worst_relative_loss_diff": worst,
                         "worst_relative_lora_b_diff": adapter, "tolerances": [3e-2, 0.1],
                         "fast_path": arms["fast"]["fast_path"], "plain_path": arms["plain"]["fast_path"]}}


def run_checks() -> dict:
    out = {}
    for check in (liger_checks, packed_attention_checks, training_check):
        try:
            out.update(check())
        except Exception as exc:  # a check that breaks is a finding, not the end of the benchmark
            out[check.__name__] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--arm"]:  # one arm of training_check
        arm, base, data, out = argv[1], *map(Path, argv[2:5])
        print("ARM " + json.dumps(training_arm(arm, base, data, out)), flush=True)
        return 0
    checks = run_checks()
    print("CHECKS " + json.dumps(checks) if "--json" in argv else json.dumps(checks, indent=2))
    return 0 if all(c.get("ok", True) for c in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
