"""Training throughput on CPU: the usual TRL + PEFT script vs `ftpack train`, side by side.

On SmolLM2-135M-Instruct (the embedded base) with the README demo's data
(examples/qa.messages.jsonl) and LoRA settings (examples/smollm2-cpu-lora.toml), each in
its own child process so that peak RSS is measured per path:

  (a) baseline: plain TRL SFTTrainer + PEFT LoRA in fp32 with padded batches (the default
      random sampler), SDPA attention, assistant-only loss with the same training chat
      template, gradient checkpointing off (TRL's default turns it on, which is slower);
  (b) ftpack: ``ftpack.training.train.train`` as the demo config sets it up (``--precision
      auto``, so bf16 autocast where the CPU has native bf16; ``--torch-compile auto``,
      which the demo's 136 steps turn on where a C++ compiler is installed, so this shorter
      run asks for it), nothing else changed. ``--eager`` adds ftpack without the compile.

Both run ``--steps`` optimizer steps of the demo's batch size after two warm-up steps
that are not timed (the first step of a compiled run compiles the decoder blocks, or
loads them from the cache: its seconds are reported as ``first_step_seconds``).
Reported per path: tokens/s of real tokens (TRL's count of non-padding tokens), peak RSS
(the child's own VmHWM: ``ru_maxrss`` of a fork+exec child would include the parent) and
model FLOP utilisation. Also the machine's attainable matmul
peak in fp32 and bf16 (GFLOP/s on the training threads, an MLP-shaped and a square
matmul, the larger wins).

MFU counts the work LoRA training needs, per step: 2·N for the forward of every frozen
projection and 2·N for its input gradient (no weight gradient), i.e. 4·N per real token
with N the projections of the decoder blocks; 6·N_lora for the adapters (forward, input
and weight gradients); and the 49k-word LM head (4·V·d) only for the tokens that carry a
label (assistant text), since no other position needs logits. Attention scores (~2% at
these lengths) are not counted. MFU = that FLOP rate / the matmul peak of the precision
the path trains in.

The CPU may be shared (other processes make every figure lower and noisier); the JSON
records the load average before and after. Not a test (minutes).

    .venv/bin/python benchmarks/train_throughput.py [--steps 20] [--eager] [--checkpointing] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "smollm2-cpu-lora.toml"
DATA = ROOT / "examples" / "qa.messages.jsonl"
WARMUP_STEPS = 2


def peak_rss_gb() -> float:
    """This process's own high-water mark of resident memory (VmHWM), in GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) * 1024 / 1e9, 3)
    import resource  # pragma: no cover - not Linux

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 3)


def demo_settings(steps: int):
    """The demo config's training settings, stopped after ``steps`` optimizer steps."""
    from ftpack.core.config import load_config_file
    from ftpack.training.settings import TrainSettings

    cfg = load_config_file(DEMO)
    return TrainSettings.from_config({**cfg, "max_steps": steps})


def step_timer():
    """A TrainerCallback timing each optimizer step and reading TRL's token count."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.tokens: list[float] = []  # cumulative real tokens after each logged step
            self._t = 0.0

        def on_step_begin(self, args, state, control, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.seconds.append(time.perf_counter() - self._t)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "num_tokens" in logs and "loss" in logs:
                self.tokens.append(float(logs["num_tokens"]))

    return StepTimer()


def label_counter():
    """Wraps a trainer's compute_loss to count the positions with a label (for MFU)."""
    counts = {"labelled": 0, "tokens": 0}

    def wrap(trainer):
        original = trainer.compute_loss

        def compute_loss(model, inputs, *args, **kwargs):
            if model.training:
                counts["labelled"] += int((inputs["labels"][:, 1:] != -100).sum())
                counts["tokens"] += int(inputs["attention_mask"].sum()) if "attention_mask" in inputs \
                    else int(inputs["input_ids"].numel())
            return original(model, inputs, *args, **kwargs)

        trainer.compute_loss = compute_loss

    return counts, wrap


def run_baseline(steps: int) -> dict:
    """(a) The usual script: TRL SFTTrainer + PEFT LoRA, fp32, padded random batches."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from ftpack.training.bases import resolve_base
    from ftpack.training.data import read_messages_jsonl
    from ftpack.training.templates import install_chat_template, load_template

    s = demo_settings(steps)
    path = resolve_base("smollm2-135m").path
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    install_chat_template(load_template("chatml"), tokenizer)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    args = SFTConfig(output_dir=tempfile.mkdtemp(prefix="ftpack-bench-"), use_cpu=True, max_steps=steps,
                     per_device_train_batch_size=s.per_device_train_batch_size, learning_rate=s.learning_rate,
                     lr_scheduler_type=s.lr_scheduler_type, max_length=s.max_seq_length, assistant_only_loss=True,
                     gradient_checkpointing=False, logging_steps=1, save_strategy="no", report_to="none",
                     disable_tqdm=True, seed=s.seed, dataloader_num_workers=0)
    timer = step_timer()
    counts, wrap = label_counter()
    rows = [{"messages": m} for m in read_messages_jsonl(DATA)]
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=Dataset.from_list(rows),
                         callbacks=[timer])
    wrap(trainer)
    trainer.train()
    return measured(timer, counts, model, precision="fp32", threads=torch.get_num_threads())


def run_ftpack(steps: int, checkpointing: bool = False, eager: bool = False) -> dict:
    """(b) ``ftpack train`` with the demo config's settings as the demo runs them
    (``checkpointing``: plus ``--gradient-checkpointing``, the memory-saving variant;
    ``eager``: without ``--torch-compile``)."""
    import torch

    from ftpack.core.report import silenced
    from ftpack.training import train as train_module
    from ftpack.training.block_compile import AUTO_MIN_STEPS, resolve_torch_compile
    from ftpack.training.speed import resolve_precision

    timer = step_timer()
    counts, wrap = label_counter()
    setup = train_module.setup

    def setup_and_count(*args, **kwargs):
        run = setup(*args, **kwargs)
        wrap(run.trainer)
        return run

    train_module.setup = setup_and_count
    with silenced(), tempfile.TemporaryDirectory(prefix="ftpack-bench-") as out:
        settings = demo_settings(steps)
        if checkpointing:
            settings = dataclasses.replace(settings, gradient_checkpointing=True)
        # What --torch-compile auto gives the demo's own run (136 steps), not this short one.
        bf16 = resolve_precision(settings.precision, "cpu")[0] == "bf16"
        demo_compiles, _ = resolve_torch_compile(settings.torch_compile, method=settings.method, device="cpu",
                                                 bf16=bf16, world=1, steps=max(steps, AUTO_MIN_STEPS),
                                                 checkpointing=checkpointing, dora=settings.dora)
        settings = dataclasses.replace(settings, torch_compile=demo_compiles and not eager)
        result = train_module.train("smollm2-135m", DATA, Path(out), settings=settings,
                                    template="chatml", callbacks=[timer], resume=False)
    model_info = result.metrics
    return {**measured(timer, counts, None, precision=model_info["precision"], threads=torch.get_num_threads(),
                       why=model_info.get("precision_reason"), lora_parameters=model_info["trainable_parameters"]),
            "torch_compile": model_info["torch_compile"], "torch_compile_reason": model_info["torch_compile_reason"]}


def measured(timer, counts, model, *, precision: str, threads: int, why: str | None = None,
             lora_parameters: int | None = None) -> dict:
    """Tokens/s over the steps after the warm-up, and what MFU needs."""
    seconds = sum(timer.seconds[WARMUP_STEPS:])
    tokens = timer.tokens[-1] - timer.tokens[WARMUP_STEPS - 1]
    share = tokens / max(timer.tokens[-1], 1)
    if lora_parameters is None:
        lora_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"tokens_per_s": round(tokens / seconds, 1), "seconds": round(seconds, 2), "tokens": int(tokens),
            "labelled": int(counts["labelled"] * share), "peak_rss_gb": peak_rss_gb(), "precision": precision,
            "precision_reason": why, "threads": threads, "lora_parameters": lora_parameters,
            "first_step_seconds": round(timer.seconds[0], 2), "step_seconds": [round(x, 2) for x in timer.seconds]}


def model_flops(r: dict) -> float:
    """Model FLOPs of a measured run (see the module docstring)."""
    from transformers import AutoConfig

    from ftpack.training.bases import resolve_base

    c = AutoConfig.from_pretrained(str(resolve_base("smollm2-135m").path))
    d, ff, layers = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    kv = c.num_key_value_heads * (d // c.num_attention_heads)
    blocks = layers * (d * d * 2 + d * kv * 2 + 3 * d * ff)  # q, o; k, v; gate, up, down
    return r["tokens"] * (4 * blocks + 6 * r["lora_parameters"]) + r["labelled"] * 4 * c.vocab_size * d


def matmul_peaks() -> dict:
    """Attainable matmul GFLOP/s on the training threads, fp32 and bf16."""
    import torch

    from ftpack.training.speed import matmul_gflops, use_physical_cores

    use_physical_cores()
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        out[name] = round(max(matmul_gflops(dtype, m=2048, k=576, n=1536, seconds=1.0),
                              matmul_gflops(dtype, m=2048, k=2048, n=2048, seconds=1.0)), 1)
    return out


def child(which: str, steps: int) -> dict:
    """Run one path in a fresh interpreter; its JSON comes back on stdout's last line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, __file__, "--child", which, "--steps", str(steps)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{which} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="timed optimizer steps per path (after 2 warm-up steps)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--checkpointing", action="store_true",
                    help="also run ftpack train with --gradient-checkpointing (less memory, slower)")
    ap.add_argument("--eager", action="store_true", help="also run ftpack train with --no-torch-compile")
    ap.add_argument("--child", choices=("baseline", "ftpack", "ftpack-checkpointing", "ftpack-eager"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    total = args.steps + WARMUP_STEPS
    if args.child:
        run = {"baseline": run_baseline, "ftpack": run_ftpack,
               "ftpack-checkpointing": lambda n: run_ftpack(n, checkpointing=True),
               "ftpack-eager": lambda n: run_ftpack(n, eager=True)}[args.child]
        print(json.dumps(run(total)))
        return 0

    load_before = os.getloadavg()[0]
    peaks = matmul_peaks()
    base, fast = child("baseline", total), child("ftpack", total)
    lean = child("ftpack-checkpointing", total) if args.checkpointing else None
    eager = child("ftpack-eager", total) if args.eager else None
    peak_of = {"fp32": peaks["fp32"], "bf16": peaks["bf16"]}
    mfu = lambda r: round(model_flops(r) / r["seconds"] / 1e9 / peak_of.get(r["precision"], peaks["fp32"]), 4)  # noqa: E731
    result = {
        "tokens_per_s_baseline": base["tokens_per_s"], "tokens_per_s": fast["tokens_per_s"],
        "speedup": round(fast["tokens_per_s"] / base["tokens_per_s"], 2),
        "peak_rss_gb_baseline": base["peak_rss_gb"], "peak_rss_gb": fast["peak_rss_gb"],
        "matmul_peak_gflops_fp32": peaks["fp32"], "matmul_peak_gflops_bf16": peaks["bf16"],
        "mfu": mfu(fast), "mfu_baseline": mfu(base),
        "model_gflops_per_s": round(model_flops(fast) / fast["seconds"] / 1e9, 1),
        "model_gflops_per_s_baseline": round(model_flops(base) / base["seconds"] / 1e9, 1),
        "precision": fast["precision"], "precision_reason": fast["precision_reason"], "threads": fast["threads"],
        "torch_compile": fast["torch_compile"], "first_step_seconds": fast["first_step_seconds"],
        "steps": args.steps, "batch_size": demo_settings(1).per_device_train_batch_size,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "baseline": base, "ftpack": fast,
    }
    if lean is not None:
        result.update(tokens_per_s_checkpointing=lean["tokens_per_s"], peak_rss_gb_checkpointing=lean["peak_rss_gb"],
                      ftpack_checkpointing=lean)
    if eager is not None:
        result.update(tokens_per_s_eager=eager["tokens_per_s"], peak_rss_gb_eager=eager["peak_rss_gb"],
                      mfu_eager=mfu(eager), ftpack_eager=eager)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"matmul peak on {fast['threads']} threads: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s")
    print(f"{'':28s}{'baseline (TRL+PEFT fp32)':>26s}{'ftpack train':>16s}")
    print(f"{'tokens/s (real tokens)':28s}{base['tokens_per_s']:>26.1f}{fast['tokens_per_s']:>16.1f}")
    print(f"{'peak RSS (GB)':28s}{base['peak_rss_gb']:>26.2f}{fast['peak_rss_gb']:>16.2f}")
    print(f"{'MFU':28s}{result['mfu_baseline']:>26.1%}{result['mfu']:>16.1%}")
    print(f"{'precision':28s}{'fp32':>26s}{fast['precision']:>16s}")
    print(f"{'torch.compile (blocks)':28s}{'no':>26s}{'yes' if fast['torch_compile'] else 'no':>16s}"
          f"   (first step {fast['first_step_seconds']:.0f} s, not timed)")
    if eager is not None:
        print(f"ftpack train --no-torch-compile: {eager['tokens_per_s']:.1f} tokens/s, "
              f"peak RSS {eager['peak_rss_gb']:.2f} GB, MFU {result['mfu_eager']:.1%}")
    if lean is not None:
        print(f"ftpack train --gradient-checkpointing: {lean['tokens_per_s']:.1f} tokens/s, "
              f"peak RSS {lean['peak_rss_gb']:.2f} GB")
    print(f"speedup {result['speedup']:.2f}x (target >= 2.5); peak RSS {fast['peak_rss_gb']:.2f} GB (target <= 1.5); "
          f"load average {result['load_average'][0]} -> {result['load_average'][1]} (a shared CPU lowers every figure)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
