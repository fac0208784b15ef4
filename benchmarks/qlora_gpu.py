"""QLoRA on a GPU: the plain TRL + PEFT + bitsandbytes script, `ftpack train` and Unsloth, side by side.

A synthetic Llama of 7B shape (hidden 4096, 32 layers, 32 heads, MLP 11008, vocabulary
32000; random weights, bf16 safetensors) with the tokenizer of the tests' tiny Llama,
trained on the README demo's conversations (examples/qa.messages.jsonl, ChatML), each
path in its own process (peak VRAM is the process's own; Unsloth patches transformers):

  baseline  4-bit NF4 base (double quantization, bf16 compute) +
            ``prepare_model_for_kbit_training`` + LoRA r16 on every linear layer, TRL
            SFTTrainer, padded batches, gradient checkpointing (TRL's default);
  ftpack    ``ftpack.training.train`` with ``method="qlora"`` and the same LoRA settings:
            its GPU fast path (ftpack/training/cuda_speed.py), recorded in the result;
  unsloth   ``FastLanguageModel`` (4-bit, LoRA r16 on the same projections, its own
            gradient checkpointing) with the same TRL trainer settings, when unsloth
            imports (``--unsloth-site`` puts its own package set first on the path).

All: batch 8, max length 512, assistant-only loss, lr 2e-4, ``--warmup`` untimed steps,
then ``--steps`` timed optimizer steps (CUDA synchronized at each step's ends). Tokens are
the real ones each step's examples hold (counted before collation, so padding never
counts); peak VRAM is ``torch.cuda.max_memory_allocated`` over the whole process (model
loading included). ``--variant NAME:KEY=VALUE,...`` adds ftpack runs with other settings
(e.g. ``ftpack-padded:padding_free=false``).

Before timing, on a GPU, benchmarks/gpu_checks.py compares each fast-path kernel with the
plain computation; the result carries its findings. The result is printed and, with
``--results-dir`` (default benchmarks/results on a GPU), written as one JSON per run.

    python benchmarks/qlora_gpu.py [--steps 50] [--warmup 5] [--tiny] [--results-dir DIR]

``--tiny`` runs the same code on a tiny model (a CPU works: no VRAM, no Unsloth) to check
the script itself; tests/test_benchmarks.py does.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from ftpack.core.atomic import write_json  # noqa: E402 - after the path setup
DATA = ROOT / "examples" / "qa.messages.jsonl"
SHAPE_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
SHAPE_TINY = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=32000, max_position_embeddings=2048)
BATCH, MAX_LENGTH, LR, RANK, ALPHA = 8, 512, 2e-4, 16, 32
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def synthetic_base(folder: Path, shape: dict) -> Path:
    """A random Llama of ``shape`` (bf16 safetensors) with the tiny test tokenizer."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tiny_model import build_tiny_llama

    tok = build_tiny_llama(folder / "tok")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok_config = json.loads((tok / "config.json").read_text())
    config = LlamaConfig(**shape, bos_token_id=tok_config.get("bos_token_id"),
                         eos_token_id=tok_config.get("eos_token_id"), pad_token_id=tok_config.get("pad_token_id"))
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    out = folder / "base"
    model.save_pretrained(out)
    del model
    for f in tok.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy2(f, out / f.name)
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


# -- measuring ---------------------------------------------------------------------------------

class Meter:
    """Real tokens per step (counted from the examples a collator receives) and step times
    (CUDA synchronized at both ends)."""

    def __init__(self, profile_steps: tuple[int, int] | None = None) -> None:
        from collections import deque

        self.collated: deque[int] = deque()  # batches collated, not yet stepped on (loaders fetch ahead)
        self.tokens: list[int] = []
        self.seconds: list[float] = []
        self._t = 0.0
        self.profile_steps = profile_steps  # (first, last) step, 1-based, profiled (inside the warm-up)
        self._profiler = None
        self.profile: dict | None = None

    def wrap(self, collator):
        def collate(examples):
            self.collated.append(sum(len(e["input_ids"]) for e in examples))
            return collator(examples)
        return collate

    def callback(self):
        from transformers import TrainerCallback

        meter = self

        class StepMeter(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if meter.profile_steps and state.global_step + 1 == meter.profile_steps[0]:
                    meter.start_profile()
                if not meter.seconds:  # the first step: from its begin; later ones from the last step's end
                    _sync()
                    meter._t = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                # step end to step end: the batch's collation and transfer (done before
                # on_step_begin) and the logging after a step are inside the timed window
                _sync()
                now = time.perf_counter()
                meter.seconds.append(now - meter._t)
                meter._t = now
                steps = args.gradient_accumulation_steps
                meter.tokens.append(sum(meter.collated.popleft() for _ in range(min(steps, len(meter.collated)))))
                if meter._profiler is not None and state.global_step == meter.profile_steps[1]:
                    meter.stop_profile()

        return StepMeter()

    def start_profile(self) -> None:
        import torch
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        self._profiler = profile(activities=activities)
        self._profiler.__enter__()
        self._profiled_from = len(self.seconds)

    def stop_profile(self) -> None:
        """Where the profiled steps' time went: the top operators by their own device time
        (CPU time without a GPU), and how busy the device was (kernel time / wall time)."""
        import torch

        from torch.autograd import DeviceType

        prof, self._profiler = self._profiler, None
        prof.__exit__(None, None, None)
        events = prof.key_averages()
        cuda = torch.cuda.is_available()
        key = "self_device_time_total" if cuda else "self_cpu_time_total"
        wall_us = sum(self.seconds[self._profiled_from:]) * 1e6
        # only the device's own events: a CPU operator also carries its kernels' time
        kernel_us = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) if cuda else None
        self.profile = {
            "steps": len(self.seconds) - self._profiled_from,
            "wall_ms": round(wall_us / 1e3, 1),
            "device_busy": round(kernel_us / wall_us, 3) if kernel_us is not None and wall_us else None,
            "cpu_ops": sum(e.count for e in events if e.device_type == DeviceType.CPU) if cuda else
            sum(e.count for e in events),
            "kernels": sum(e.count for e in events if e.device_type == DeviceType.CUDA) if cuda else None,
            "table": events.table(sort_by=key, row_limit=25, max_name_column_width=60),
        }

    def result(self, warmup: int) -> dict:
        import torch

        seconds, tokens = sum(self.seconds[warmup:]), sum(self.tokens[warmup:])
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        return {"tokens_per_s": round(tokens / seconds, 1), "seconds": round(seconds, 3), "tokens": tokens,
                "timed_steps": len(self.seconds) - warmup, "peak_vram_gib": None if peak is None else round(peak, 3),
                "step_seconds": [round(x, 4) for x in self.seconds], "profile": self.profile}


def profile_window(warmup: int) -> tuple[int, int] | None:
    """The steps profiled: two inside the warm-up, after its first (compiles, allocations),
    so the timed steps never carry the profiler's cost. None when the warm-up is too short."""
    return (2, 3) if warmup >= 4 else None


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _sft_args(steps: int, max_length: int, **extra):
    import torch
    from trl import SFTConfig

    cuda = torch.cuda.is_available()
    return SFTConfig(output_dir=tempfile.mkdtemp(prefix="ftpack-bench-"), max_steps=steps, bf16=True, use_cpu=not cuda,
                     per_device_train_batch_size=BATCH, learning_rate=LR, max_length=max_length,
                     assistant_only_loss=True, logging_steps=1, save_strategy="no", report_to="none",
                     disable_tqdm=True, seed=42, **extra)


def conversations(long: bool) -> list[list[dict]]:
    """The demo's conversations; ``long``: every 12 of them joined into one multi-turn
    conversation (about 1,500 tokens with the test tokenizer), as chat logs are."""
    from ftpack.training.data import read_messages_jsonl

    rows = read_messages_jsonl(DATA)
    if not long:
        return rows
    joined = []
    for i in range(0, len(rows) - 11, 12):
        turns = [m for conv in rows[i:i + 12] for m in conv if m["role"] != "system"]
        joined.append(rows[i][:1] + turns if rows[i][0]["role"] == "system" else turns)
    return joined


def data_file(folder: Path, long: bool) -> Path:
    """The benchmark's data as a messages JSONL file (what ``ftpack train`` reads)."""
    path = folder / ("long.jsonl" if long else "demo.jsonl")
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in conversations(long)), encoding="utf-8")
    return path


def timed_sft(model, tokenizer, data: Path, *, steps: int, warmup: int, max_length: int, profile: bool) -> dict:
    """The plain TRL trainer on ``model`` (the baseline's and Unsloth's), measured."""
    from datasets import Dataset
    from trl import SFTTrainer

    from ftpack.training.data import read_messages_jsonl

    meter = Meter(profile_window(warmup) if profile else None)
    trainer = SFTTrainer(model=model, args=_sft_args(steps + warmup, max_length), processing_class=tokenizer,
                         train_dataset=Dataset.from_list([{"messages": m} for m in read_messages_jsonl(data)]),
                         callbacks=[meter.callback()])
    trainer.data_collator = meter.wrap(trainer.data_collator)
    trainer.train()
    return meter.result(warmup)


# -- the paths (each in its own process) ------------------------------------------------------

def run_baseline(base: Path, data: Path, steps: int, warmup: int, max_length: int, profile: bool = False) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from ftpack.training.templates import install_chat_template, load_template

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    install_chat_template(load_template("chatml"), tokenizer)
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(str(base), quantization_config=bnb, dtype=torch.bfloat16,
                                                 device_map={"": 0 if torch.cuda.is_available() else "cpu"})
    model = prepare_model_for_kbit_training(model)
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    return timed_sft(model, tokenizer, data, steps=steps, warmup=warmup, max_length=max_length, profile=profile)


def run_ftpack(base: Path, data: Path, steps: int, warmup: int, max_length: int, overrides: dict | None = None,
               profile: bool = False) -> dict:
    from ftpack.core.report import silenced
    from ftpack.training.train import fit, setup
    from ftpack.training.settings import TrainSettings

    meter = Meter(profile_window(warmup) if profile else None)
    settings = TrainSettings.of(method="qlora", max_steps=steps + warmup, per_device_train_batch_size=BATCH,
                                learning_rate=LR, lora_r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                max_seq_length=max_length, save_steps=10**6, **(overrides or {}))
    with silenced(), tempfile.TemporaryDirectory(prefix="ftpack-bench-") as out:
        run = setup(base, data, Path(out), settings, template="chatml", resume=False, callbacks=[meter.callback()])
        run.trainer.data_collator = meter.wrap(run.trainer.data_collator)
        fit(run)
    return {**meter.result(warmup), "precision": run.settings.precision, "fast_path": run.fast_path,
            "gradient_checkpointing": run.settings.gradient_checkpointing}


def run_unsloth(base: Path, data: Path, steps: int, warmup: int, max_length: int, profile: bool = False) -> dict:
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    from unsloth import FastLanguageModel  # first: it patches transformers and TRL

    import torch

    from ftpack.training.templates import install_chat_template, load_template

    model, tokenizer = FastLanguageModel.from_pretrained(str(base), max_seq_length=max_length, dtype=torch.bfloat16,
                                                         load_in_4bit=True, local_files_only=True)
    install_chat_template(load_template("chatml"), tokenizer)
    model = FastLanguageModel.get_peft_model(model, r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                             target_modules=PROJECTIONS, bias="none",
                                             use_gradient_checkpointing="unsloth", random_state=42)
    import unsloth

    return {**timed_sft(model, tokenizer, data, steps=steps, warmup=warmup, max_length=max_length, profile=profile),
            "unsloth": unsloth.__version__}


def child(args) -> int:
    """One path in this process; its result as JSON on the last line of stdout."""
    base, data = Path(args.base), Path(args.data)
    common = dict(steps=args.steps, warmup=args.warmup, max_length=args.max_length, profile=args.profile)
    if args.path == "baseline":
        out = run_baseline(base, data, **common)
    elif args.path == "unsloth":
        out = run_unsloth(base, data, **common)
    else:
        out = run_ftpack(base, data, overrides=json.loads(args.overrides or "{}"), **common)
    out["versions"] = versions()  # this process's own (Unsloth's run has its own TRL and datasets)
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def in_child(path: str, base: Path, data: Path, *, steps: int, warmup: int, max_length: int,
             overrides: dict | None = None, site: str | None = None, profile: bool = False,
             timeout: float | None = None) -> dict:
    """Run one path in a fresh interpreter; its result, or {"error": …} with the output's tail."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if site:
        env["PYTHONPATH"] = os.pathsep.join([site, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, __file__, "--child", path, "--base", str(base), "--data", str(data), "--steps", str(steps),
           "--warmup", str(warmup), "--max-length", str(max_length), "--overrides", json.dumps(overrides or {})]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd + (["--profile"] if profile else []), capture_output=True, text=True, env=env,
                              cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")
        return {"error": f"timed out after {timeout:.0f} s (--budget-s)", "tail": out[-3000:]}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}", "tail": (proc.stdout + proc.stderr)[-3000:]}
    return {**json.loads(lines[-1][len("RESULT "):]), "wall_s": round(time.perf_counter() - t, 1)}


def checks_in_child(timeout: float | None) -> dict:
    """benchmarks/gpu_checks.py in its own process: a kernel that breaks the CUDA context
    takes only that process down."""
    try:
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_checks.py"), "--json"], cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"gpu_checks": {"ok": False, "error": f"timed out after {timeout:.0f} s"}}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("CHECKS ")]
    if not lines:
        return {"gpu_checks": {"ok": False, "error": f"exit {proc.returncode}",
                               "tail": (proc.stdout + proc.stderr)[-2000:]}}
    return json.loads(lines[-1][len("CHECKS "):])


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "liger-kernel", "flash-attn",
                 "unsloth"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def parse_variant(text: str) -> tuple[str, dict]:
    """``NAME:KEY=VALUE,...`` → (NAME, {key: value}) with true/false/none/numbers parsed."""
    name, _, spec = text.partition(":")
    overrides = {}
    for item in filter(None, spec.split(",")):
        key, _, raw = item.partition("=")
        value: object = {"true": True, "false": False, "none": None}.get(raw.lower(), raw)
        if isinstance(value, str) and re.fullmatch(r"-?\d+(\.\d+)?", value):
            value = float(value) if "." in value else int(value)
        overrides[key.strip()] = value
    return name, overrides


def result_path(results_dir: Path | None, name: str, device: str) -> Path | None:
    """``results_dir/NAME-DEVICE-DATE-TIME.json`` (None without a folder)."""
    if results_dir is None:
        return None
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    return results_dir / f"{name}-{slug}-{_dt.datetime.now():%Y%m%d-%H%M%S}.json"


def write_result(result: dict, path: Path | None) -> None:
    """The result JSON, written whole under a temporary name and renamed (also after each
    path, so a run cut short keeps what it measured)."""
    if path is not None:
        write_json(path, result)


def summarize(result: dict) -> dict:
    """The headline keys from the runs measured so far."""
    runs = result["runs"]

    def value(name, key):
        return runs.get(name, {}).get(key)

    fast, plain = value("ftpack", "tokens_per_s"), value("baseline", "tokens_per_s")
    result.update({
        "tokens_per_s_baseline": plain, "tokens_per_s": fast, "tokens_per_s_unsloth": value("unsloth", "tokens_per_s"),
        "speedup": round(fast / plain, 3) if fast and plain else None,
        "peak_vram_gib_baseline": value("baseline", "peak_vram_gib"), "peak_vram_gib": value("ftpack", "peak_vram_gib"),
        "peak_vram_gib_unsloth": value("unsloth", "peak_vram_gib"),
        "vram_ratio": (round(value("ftpack", "peak_vram_gib") / value("baseline", "peak_vram_gib"), 3)
                       if value("ftpack", "peak_vram_gib") and value("baseline", "peak_vram_gib") else None),
    })
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50, help="timed optimizer steps per path")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    ap.add_argument("--tiny", action="store_true", help="a tiny model instead of the 7B shape (checks the script)")
    ap.add_argument("--long", action="store_true",
                    help="multi-turn conversations of about 1,500 tokens (max length 2048) instead of the demo's")
    ap.add_argument("--results-dir", type=Path, default=None,
                    help="write the result JSON here (default on a GPU: benchmarks/results)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="stop starting paths after this many seconds, and end each by then (default: none)")
    ap.add_argument("--unsloth-site", default=None, help="a folder with Unsloth's package set, first on its path")
    ap.add_argument("--no-unsloth", action="store_true")
    ap.add_argument("--no-checks", action="store_true", help="skip benchmarks/gpu_checks.py")
    ap.add_argument("--variant", action="append", default=[], help="NAME:KEY=VALUE,... an extra ftpack run")
    ap.add_argument("--profile", action="store_true",
                    help="profile two warm-up steps of each path (top operators, how busy the device is)")
    ap.add_argument("--child", choices=["baseline", "ftpack", "unsloth"], help=argparse.SUPPRESS)
    ap.add_argument("--base", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--max-length", type=int, default=MAX_LENGTH, help=argparse.SUPPRESS)
    ap.add_argument("--overrides", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        args.path = args.child
        return child(args)

    import torch

    started = time.perf_counter()

    def left() -> float | None:
        return None if args.budget_s is None else args.budget_s - (time.perf_counter() - started)

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    shape = "tiny" if args.tiny else "7B"
    max_length = 2048 if args.long else MAX_LENGTH
    results_dir = args.results_dir or (ROOT / "benchmarks" / "results" if cuda else None)
    path = result_path(results_dir, f"qlora_gpu-{shape}{'-long' if args.long else ''}", device)
    result = {
        "benchmark": "qlora_gpu", "date": _dt.date.today().isoformat(), "device": device, "model_shape": shape,
        "shape": SHAPE_TINY if args.tiny else SHAPE_7B, "data": "long" if args.long else "demo",
        "steps": args.steps, "warmup_steps": args.warmup, "batch": BATCH, "max_length": max_length, "lora_r": RANK,
        "runs": {}, "versions": versions(),
        "command": "python benchmarks/qlora_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    summarize(result)
    result["checks"] = {} if args.no_checks else checks_in_child(left())
    write_result(result, path)
    with tempfile.TemporaryDirectory(prefix="ftpack-7b-") as tmp:
        t = time.perf_counter()
        base = synthetic_base(Path(tmp), SHAPE_TINY if args.tiny else SHAPE_7B)
        result["base_written_s"] = round(time.perf_counter() - t, 1)
        data = data_file(Path(tmp), args.long)
        common = dict(steps=args.steps, warmup=args.warmup, max_length=max_length, profile=args.profile)
        plan = [("baseline", "baseline", {}), ("ftpack", "ftpack", {})]
        plan += [(name, "ftpack", overrides) for name, overrides in map(parse_variant, args.variant)]
        if args.no_unsloth:
            result["runs"]["unsloth"] = {"error": "not run (--no-unsloth)"}
        elif not cuda:
            result["runs"]["unsloth"] = {"error": "not run: Unsloth needs a CUDA GPU"}
        else:
            plan.append(("unsloth", "unsloth", {}))  # last: what it needs is least sure to be there
        for name, kind, overrides in plan:
            remaining = left()
            if remaining is not None and remaining < 30:
                result["runs"][name] = {"error": "not run: --budget-s spent"}
                continue
            run = in_child(kind, base, data, overrides=overrides or None, timeout=remaining,
                           site=args.unsloth_site if kind == "unsloth" else None, **common)
            result["runs"][name] = {**run, "overrides": overrides} if overrides else run
            write_result(summarize(result), path)
    text = json.dumps(result, indent=2)
    print(text)
    if path is not None:
        print(f"wrote {path}", file=sys.stderr)
    runs = result["runs"]
    return 0 if all("error" not in runs.get(k, {"error": 1}) for k in ("baseline", "ftpack")) else 1


if __name__ == "__main__":
    sys.exit(main())
