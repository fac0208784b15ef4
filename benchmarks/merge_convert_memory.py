"""Peak memory and wall time: PEFT merge_and_unload + save + convert vs `ftpack convert --adapter`.

Writes a synthetic 1.1B-parameter Llama-shaped model (TinyLlama shapes: hidden 2048,
22 layers, 32 heads / 4 kv heads, intermediate 5632, vocab 32000; random bf16 weights,
sharded safetensors) and a rank-16 LoRA adapter on every linear layer, then runs, each
in its own child process so that peak RSS is measured per path:

  (a) the usual path: PeftModel.merge_and_unload() + save_pretrained(), then convert
      the merged folder to an F16 GGUF (with ftpack's converter: llama.cpp's script is
      not installable from a registry);
  (b) ftpack convert BASE --adapter ADAPTER: merge on the fly while writing the GGUF;
  (c) for reference, ftpack merge (a merged Hugging Face folder, streamed the same way).

Prints peak RSS and wall time side by side and the ratios, and checks that both GGUFs
hold the same tensors with values that differ only by 16-bit rounding (PEFT merges in
bf16, ftpack in fp32). Not a test (minutes, GBs).

Peak RSS is each child's own high-water mark (VmHWM in /proc/self/status): the
``ru_maxrss`` of a child started by fork+exec also counts the parent's memory at the
fork (Linux carries it across exec), which made every path look like >= the parent.

    .venv/bin/python benchmarks/merge_convert_memory.py [--layers 22] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPE = dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=4,
             vocab_size=32000, max_position_embeddings=2048)
RANK = 16
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def write_model(folder: Path, layers: int) -> int:
    """Random bf16 Llama weights, one shard per few layers (never the whole model in memory)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_model import build_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    cfg = LlamaConfig(num_hidden_layers=layers, tie_word_embeddings=False, rms_norm_eps=1e-5,
                      bos_token_id=1, eos_token_id=4, pad_token_id=2, dtype="bfloat16", **SHAPE)
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(folder)
    build_tokenizer(folder)  # small byte-level BPE; the GGUF vocabulary is padded to 32000
    h, ff, kv = SHAPE["hidden_size"], SHAPE["intermediate_size"], SHAPE["hidden_size"] // 32 * 4
    gen = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return (torch.randn(*shape, generator=gen) * 0.02).to(torch.bfloat16)

    groups = [["embed"]] + [list(range(i, min(i + 4, layers))) for i in range(0, layers, 4)] + [["head"]]
    weight_map, total = {}, 0
    for n, group in enumerate(groups):
        shard = f"model-{n + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for item in group:
            if item == "embed":
                tensors["model.embed_tokens.weight"] = rnd(SHAPE["vocab_size"], h)
            elif item == "head":
                tensors["model.norm.weight"] = torch.ones(h, dtype=torch.bfloat16)
                tensors["lm_head.weight"] = rnd(SHAPE["vocab_size"], h)
            else:
                p = f"model.layers.{item}."
                tensors.update({
                    p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
                    p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
                    p + "self_attn.q_proj.weight": rnd(h, h), p + "self_attn.k_proj.weight": rnd(kv, h),
                    p + "self_attn.v_proj.weight": rnd(kv, h), p + "self_attn.o_proj.weight": rnd(h, h),
                    p + "mlp.gate_proj.weight": rnd(ff, h), p + "mlp.up_proj.weight": rnd(ff, h),
                    p + "mlp.down_proj.weight": rnd(h, ff)})
        save_file(tensors, folder / shard, metadata={"format": "pt"})
        for k, t in tensors.items():
            weight_map[k] = shard
            total += t.numel()
        del tensors
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total * 2}, "weight_map": weight_map}))
    return total


def write_adapter(folder: Path, base: Path, layers: int) -> None:
    """A rank-16 LoRA adapter on every linear layer, in PEFT's file format."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    h, ff, kv = SHAPE["hidden_size"], SHAPE["intermediate_size"], SHAPE["hidden_size"] // 32 * 4
    dims = {"q_proj": (h, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, h),
            "gate_proj": (ff, h), "up_proj": (ff, h), "down_proj": (h, ff)}
    gen = torch.Generator().manual_seed(1)
    tensors = {}
    for i in range(layers):
        for mod, (out_f, in_f) in dims.items():
            part = "self_attn" if mod.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            key = f"base_model.model.model.layers.{i}.{part}.{mod}"
            tensors[key + ".lora_A.weight"] = torch.randn(RANK, in_f, generator=gen) * 0.01
            tensors[key + ".lora_B.weight"] = torch.randn(out_f, RANK, generator=gen) * 0.01
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": RANK, "lora_alpha": 2 * RANK, "target_modules": list(TARGETS),
        "base_model_name_or_path": str(base), "lora_dropout": 0.0, "bias": "none", "task_type": "CAUSAL_LM",
        "fan_in_fan_out": False, "use_dora": False, "use_rslora": False}))


# -- the measured paths (each runs in a child process) -------------------------------------

def child_peft_merge(base: str, adapter: str, merged: str) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.save_pretrained(merged)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (Path(base) / f).is_file():
            shutil.copy(Path(base) / f, Path(merged) / f)


def child_convert(model: str, out: str, adapter: str | None) -> None:
    sys.path.insert(0, str(ROOT))
    from ftpack.gguf.convert import convert_to_gguf
    from ftpack.core.report import Reporter, set_reporter

    set_reporter(Reporter("quiet"))
    convert_to_gguf(model, out, outtype="f16", adapter_dir=adapter)


def peak_rss_kb() -> int:
    """This process's own peak RSS (VmHWM); ru_maxrss where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child_merge(base: str, adapter: str, out: str) -> None:
    sys.path.insert(0, str(ROOT))
    from ftpack.gguf.merge import merge_adapter
    from ftpack.core.report import Reporter, set_reporter

    set_reporter(Reporter("quiet"))
    merge_adapter(base, adapter, out)


def run_child(*args: str) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB) of one child process."""
    cmd = [sys.executable, __file__, "--child", *args]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        sys.exit(f"child {args[0]} failed:\n{proc.stderr[-3000:]}")
    peak_kb = json.loads(proc.stdout.strip().splitlines()[-1])["maxrss_kb"]
    return wall, peak_kb / 1024 / 1024


def compare_ggufs(a: Path, b: Path) -> tuple[bool, float]:
    """(same tensor names/types/shapes regardless of order, largest |a - b| over all values)."""
    import numpy as np
    from gguf import GGUFReader

    ta = {t.name: t for t in GGUFReader(a).tensors}
    tb = {t.name: t for t in GGUFReader(b).tensors}

    def layout(tensors):
        return sorted((t.name, t.tensor_type.name, tuple(int(d) for d in t.shape)) for t in tensors.values())

    if layout(ta) != layout(tb):
        return False, float("nan")
    worst = 0.0
    for name, x in ta.items():
        xa, xb = np.asarray(x.data), np.asarray(tb[name].data)
        for i in range(0, xa.shape[0], 1024):  # row blocks: memory stays small
            d = np.abs(xa[i:i + 1024].astype(np.float32) - xb[i:i + 1024].astype(np.float32)).max()
            worst = max(worst, float(d))
    return True, worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=22, help="decoder layers (22 = 1.1B parameters)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "peft":
            child_peft_merge(*rest)
        elif kind == "merge":
            child_merge(*rest)
        else:
            child_convert(rest[0], rest[1], rest[2] if len(rest) > 2 else None)
        print(json.dumps({"maxrss_kb": peak_rss_kb()}))
        return

    work = args.workdir or Path(tempfile.mkdtemp(prefix="ftpack-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    base, adapter, merged = work / "base", work / "adapter", work / "merged"
    try:
        t0 = time.monotonic()
        n = write_model(base, args.layers)
        write_adapter(adapter, base, args.layers)
        print(f"synthetic model: {n / 1e9:.2f}B parameters, bf16, "
              f"{len(list(base.glob('*.safetensors')))} shards; rank-{RANK} adapter "
              f"({(adapter / 'adapter_model.safetensors').stat().st_size / 1e6:.0f} MB); "
              f"written in {time.monotonic() - t0:.0f}s")
        a1_wall, a1_rss = run_child("peft", str(base), str(adapter), str(merged))
        a2_wall, a2_rss = run_child("convert", str(merged), str(work / "a.gguf"))
        shutil.rmtree(merged, ignore_errors=True)
        b_wall, b_rss = run_child("convert", str(base), str(work / "b.gguf"), str(adapter))
        c_wall, c_rss = run_child("merge", str(base), str(adapter), str(work / "merged-ftpack"))
        shutil.rmtree(work / "merged-ftpack", ignore_errors=True)
        same, max_diff = compare_ggufs(work / "a.gguf", work / "b.gguf")
        a_wall, a_rss = a1_wall + a2_wall, max(a1_rss, a2_rss)
        print()
        print(f"{'path':58} {'peak RSS':>10} {'wall':>9}")
        print(f"{'(a) PEFT merge_and_unload + save_pretrained':58} {a1_rss:>8.2f} GB {a1_wall:>7.1f} s")
        print(f"{'    then convert merged folder -> F16 GGUF':58} {a2_rss:>8.2f} GB {a2_wall:>7.1f} s")
        print(f"{'(a) total':58} {a_rss:>8.2f} GB {a_wall:>7.1f} s")
        print(f"{'(b) ftpack convert --adapter (merge on the fly) -> F16':58} {b_rss:>8.2f} GB {b_wall:>7.1f} s")
        print(f"{'(c) ftpack merge (merged HF folder, for reference)':58} {c_rss:>8.2f} GB {c_wall:>7.1f} s")
        print()
        print(f"ratio (b)/(a): peak RSS {b_rss / a_rss:.2f}x, wall time {b_wall / a_wall:.2f}x"
              f"   (same tensors in both GGUFs: {same}; largest value difference {max_diff:.2e})")
        print(f"targets: (b) peak RSS < 1.5 GB: {b_rss < 1.5}; < 1/3 of (a): {b_rss < a_rss / 3}; "
              f"(b) wall <= (a): {b_wall <= a_wall}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
