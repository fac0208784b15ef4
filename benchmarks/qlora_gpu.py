"""QLoRA on a GPU: the usual TRL + PEFT + bitsandbytes script vs `ftpack train`, side by side.

A synthetic Llama of 7B shape (hidden 4096, 32 layers, 32 heads, MLP 11008, vocabulary
32000; random weights, bf16, written as safetensors) with the tokenizer of the tests' tiny
Llama, trained on the README demo's conversations (examples/qa.messages.jsonl, ChatML):

  (a) baseline: 4-bit NF4 base (double quantization, bf16 compute) +
      ``prepare_model_for_kbit_training`` + LoRA r16 on every linear layer, TRL SFTTrainer,
      padded batches, gradient checkpointing (TRL's default);
  (b) ftpack: ``ftpack.training.train.train(method="qlora")`` with the same LoRA settings.

Both: batch 8, ``--steps`` timed optimizer steps after 2 warm-up steps; tokens/s of real
(non-padding) tokens and peak VRAM (``torch.cuda.max_memory_allocated``, reset before each
path). Needs a CUDA GPU; not a test. ``--tiny`` runs the same code on a tiny model (CPU
works) to check the script itself.

    python benchmarks/qlora_gpu.py [--steps 20] [--json] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]
DATA = ROOT / "examples" / "qa.messages.jsonl"
WARMUP_STEPS = 2
SHAPE_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
SHAPE_TINY = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=32000, max_position_embeddings=2048)


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


def run_baseline(base: Path, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    from ftpack.training.data import read_messages_jsonl
    from ftpack.training.templates import install_chat_template, load_template
    from train_throughput import step_timer

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    install_chat_template(load_template("chatml"), tokenizer)
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(str(base), quantization_config=bnb, dtype=torch.bfloat16,
                                                 device_map={"": 0 if cuda else "cpu"})
    model = prepare_model_for_kbit_training(model)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    args = SFTConfig(output_dir=tempfile.mkdtemp(prefix="ftpack-bench-"), max_steps=steps, bf16=True, use_cpu=not cuda,
                     per_device_train_batch_size=8, learning_rate=2e-4, max_length=512, assistant_only_loss=True,
                     logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=42)
    timer = step_timer()
    rows = [{"messages": m} for m in read_messages_jsonl(DATA)]
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=Dataset.from_list(rows),
                         callbacks=[timer])
    trainer.train()
    out = measured(timer)
    del trainer, model
    if cuda:
        torch.cuda.empty_cache()
    return out


def run_ftpack(base: Path, steps: int) -> dict:
    import torch

    from ftpack.core.report import silenced
    from ftpack.training.train import train
    from train_throughput import step_timer

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    timer = step_timer()
    with silenced(), tempfile.TemporaryDirectory(prefix="ftpack-bench-") as out:
        result = train(base, DATA, Path(out), method="qlora", max_steps=steps, per_device_train_batch_size=8,
                       learning_rate=2e-4, lora_r=16, lora_alpha=32, lora_dropout=0.0, max_seq_length=512,
                       template="chatml", callbacks=[timer], resume=False)
    return {**measured(timer), "precision": result.metrics.get("precision")}


def measured(timer) -> dict:
    import torch

    seconds = sum(timer.seconds[WARMUP_STEPS:])
    tokens = timer.tokens[-1] - timer.tokens[WARMUP_STEPS - 1]
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"tokens_per_s": round(tokens / seconds, 1), "seconds": round(seconds, 2), "tokens": int(tokens),
            "peak_vram_gib": round(peak, 2) if peak is not None else None,
            "step_seconds": [round(x, 3) for x in timer.seconds]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="a tiny model instead of the 7B shape (checks the script)")
    args = ap.parse_args(argv)
    import torch

    total = args.steps + WARMUP_STEPS
    with tempfile.TemporaryDirectory(prefix="ftpack-7b-") as tmp:
        t = time.perf_counter()
        base = synthetic_base(Path(tmp), SHAPE_TINY if args.tiny else SHAPE_7B)
        made = round(time.perf_counter() - t, 1)
        fast = run_ftpack(base, total)
        plain = run_baseline(base, total) if torch.cuda.is_available() or args.tiny else None
    result = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "shape": "tiny" if args.tiny else "7B", "base_written_s": made,
              "tokens_per_s": fast["tokens_per_s"], "peak_vram_gib": fast["peak_vram_gib"],
              "tokens_per_s_baseline": plain and plain["tokens_per_s"],
              "peak_vram_gib_baseline": plain and plain["peak_vram_gib"],
              "speedup": plain and round(fast["tokens_per_s"] / plain["tokens_per_s"], 2),
              "ftpack": fast, "baseline": plain,
              "versions": {m: __import__(m).__version__ for m in ("torch", "transformers", "peft", "trl",
                                                                   "bitsandbytes")}}
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
