"""Size and time: a fine-tune shipped as an adapter (`--ship adapter`) vs merged (`--ship merged`).

SmolLM2-135M-Instruct, as a user who pulled it has it: the embedded Q4_1 GGUF registered
in a fresh Ollama store as ``smollm2`` (once offline, once through the Ollama double, the
in-repo HTTP double of Ollama's API used by the tests). A random rank-16 LoRA adapter on
every projection (what `ftpack build --ship adapter` writes, F16) is then registered on
it, and the same fine-tune merged (ftpack's converter, adapter fused, quantized to the
default Q4_K_M) is registered as a model of its own. For each: bytes written into the
store (new blobs and the manifest), bytes uploaded to the server, registration time.

A synthetic Llama-3.2-1B-shaped model (hidden 2048, 16 layers, 32/8 heads, intermediate
8192, vocab 128256, tied embeddings) for size only: the adapter GGUF is written for real
from random factors of the right shapes; the merged Q4_K_M model's tensor bytes are
computed with llama.cpp's own Q4_K_M type rules (llama-quant.cpp: Q6_K for the tied
embeddings and for attn_v / ffn_down of the layers use_more_bits picks, Q4_K for the
other matrices, F32 for norms) — the tokenizer metadata (a few MB) is not counted.

Registration time through the server is measured against the double, not a real Ollama:
it includes the double parsing each new GGUF blob with gguf-py (~5 s for SmolLM2's
tokenizer, once per blob; Ollama's Go parser takes milliseconds), which the merged row
pays and the adapter row does not (its base blob is known already).

Not a test (a minute or two on two cores). Prints a Markdown table. Measured (2 shared
CPU cores, llama-cpp-python 0.3.36):

| model | registered | shipped as | bytes written to the store | bytes uploaded | registration time |
|---|---|---|---|---|---|
| SmolLM2-135M | offline | Q4_1 base (reused) + F16 adapter | 9.8 MB | - | 0.13 s |
| SmolLM2-135M | offline | merged Q4_K_M | 105.5 MB | - | 0.62 s |
| SmolLM2-135M | server | Q4_1 base (reused) + F16 adapter | 9.8 MB | 9.8 MB | 0.44 s |
| SmolLM2-135M | server | merged Q4_K_M | 105.5 MB | 105.5 MB | 9.01 s |

| model | base GGUF (reused) | adapter GGUF | merged Q4_K_M GGUF | adapter / merged |
|---|---|---|---|---|
| SmolLM2-135M | 98.4 MB (Q4_1) | 9.8 MB | 105.5 MB | 9.3% |
| Llama-3.2-1B shape (synthetic) | as merged | 22.6 MB | 799.9 MB (tensors, computed) | 2.8% |

    .venv/bin/python benchmarks/ship_size.py [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RANK = 16
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True)


def store_bytes(store: Path) -> dict[str, int]:
    return {str(p.relative_to(store)): p.stat().st_size for p in store.rglob("*") if p.is_file()} \
        if store.exists() else {}


def written(before: dict[str, int], store: Path) -> int:
    """Bytes of the files the registration added to the store (new blobs, the manifest)."""
    return sum(size for name, size in store_bytes(store).items() if name not in before)


def register_timed(name: str, modelfile: Path, **kw):
    from ftpack.core.report import Reporter
    from ftpack.ollama.registration import register

    t0 = time.perf_counter()
    result = register(name, modelfile, reporter=Reporter("quiet"), **kw)
    return result, time.perf_counter() - t0


def modelfile_for(folder: Path, gguf: Path, *, from_model: str | None = None, adapter: Path | None = None) -> Path:
    from ftpack.ollama.modelfile import build_spec, write_modelfile

    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "Modelfile"
    spec = build_spec(gguf, out, template_name="chatml", num_ctx=2048, adapter=adapter)
    write_modelfile(out, dataclasses.replace(spec, from_path=from_model) if from_model else spec)
    return out


def smollm2(work: Path) -> list[dict]:
    """Register the adapter-shipped and the merged-shipped fine-tune, offline and via the double."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ftpack.core.report import Reporter
    from ftpack.gguf.convert import convert_to_gguf
    from ftpack.gguf.lora_gguf import write_lora_gguf
    from ftpack.gguf.quantize import quantize_gguf
    from ftpack.ollama.registration import register_request
    from ftpack.ollama.request import RegistrationRequest
    from ftpack.training.bases import embedded_gguf_path, resolve_base

    sys.path.insert(0, str(ROOT / "tests"))
    from ollama_double import OllamaDouble

    base_gguf = embedded_gguf_path()
    base_dir = resolve_base("smollm2-135m").path
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                           LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=list(TARGETS),
                                      init_lora_weights=False))
    adapter_dir = work / "adapter"
    model.save_pretrained(adapter_dir)
    del model
    lora = write_lora_gguf(adapter_dir, work / "smol.lora.gguf", base_dir=base_dir, base_gguf=base_gguf,
                           reporter=Reporter("quiet")).path
    merged_f16 = convert_to_gguf(base_dir, work / "smol.f16.gguf", adapter_dir=adapter_dir).path
    merged = quantize_gguf(merged_f16, work / "smol.Q4_K_M.gguf", "Q4_K_M").path
    adapter_mf = modelfile_for(work / "adapter-model", lora, from_model="smollm2", adapter=lora)
    merged_mf = modelfile_for(work / "merged-model", merged)

    rows = []
    for mode in ("offline", "server"):
        store = work / f"store-{mode}"
        double = OllamaDouble(store).start() if mode == "server" else None
        where = {"mode": mode, "models_dir": store if mode == "offline" else None,
                 "host": double.url if double else None}
        try:  # the pulled model, as `ollama pull` left it
            register_request("smollm2", RegistrationRequest(model_path=base_gguf), reporter=Reporter("quiet"),
                             **where)
            for shipped, mf, name in (("adapter", adapter_mf, "smol-adapter"), ("merged", merged_mf, "smol-merged")):
                before = store_bytes(store)
                result, seconds = register_timed(name, mf, **where)
                rows.append({"model": "SmolLM2-135M", "mode": mode, "shipped": shipped,
                             "weights": f"Q4_1 base (reused) + F16 adapter" if shipped == "adapter"
                             else "merged Q4_K_M",
                             "store_bytes": written(before, store),
                             "uploaded_bytes": result.uploaded_bytes if mode == "server" else None,
                             "seconds": round(seconds, 3)})
        finally:
            if double is not None:
                double.stop()
    rows.append({"model": "SmolLM2-135M", "base_bytes": base_gguf.stat().st_size, "adapter_bytes": lora.stat().st_size,
                 "merged_bytes": merged.stat().st_size})
    return rows


def q4_k_m_tensor_bytes(config: dict) -> int:
    """Tensor bytes of a llama-architecture model quantized to Q4_K_M, by llama.cpp's type rules."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

    def nbytes(n: int, qtype) -> int:
        block, size = GGML_QUANT_SIZES[qtype]
        return n // block * size

    def more_bits(i: int, n: int) -> bool:  # llama-quant.cpp use_more_bits
        return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2

    h, ff, n = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    kv = h // config["num_attention_heads"] * config["num_key_value_heads"]
    total = nbytes(config["vocab_size"] * h, Q.Q6_K if config["tie_word_embeddings"] else Q.Q4_K)
    if not config["tie_word_embeddings"]:
        total += nbytes(config["vocab_size"] * h, Q.Q6_K)
    total += h * 4  # output_norm
    for i in range(n):
        total += nbytes(h * h, Q.Q4_K) * 2 + nbytes(h * kv, Q.Q4_K)  # q, o, k
        total += nbytes(h * kv, Q.Q6_K if more_bits(i, n) else Q.Q4_K)  # v
        total += nbytes(h * ff, Q.Q4_K) * 2  # gate, up
        total += nbytes(ff * h, Q.Q6_K if more_bits(i, n) else Q.Q4_K)  # down
        total += 2 * h * 4  # attn_norm, ffn_norm
    return total


def llama_1b(work: Path) -> dict:
    """The adapter GGUF of a rank-16 adapter on every projection of a Llama-3.2-1B shape, written for real."""
    import numpy as np
    from safetensors.numpy import save_file

    from ftpack.core.report import Reporter
    from ftpack.gguf.lora_gguf import write_lora_gguf

    base = work / "llama-1b"
    base.mkdir(parents=True, exist_ok=True)
    (base / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                                                  **LLAMA_1B}))
    h, ff, n = LLAMA_1B["hidden_size"], LLAMA_1B["intermediate_size"], LLAMA_1B["num_hidden_layers"]
    kv = h // LLAMA_1B["num_attention_heads"] * LLAMA_1B["num_key_value_heads"]
    shapes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h), "gate_proj": (h, ff),
              "up_proj": (h, ff), "down_proj": (ff, h)}  # (n_in, n_out)
    rng = np.random.default_rng(0)
    tensors = {}
    for i in range(n):
        for module, (n_in, n_out) in shapes.items():
            part = "self_attn" if module.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            key = f"base_model.model.model.layers.{i}.{part}.{module}"
            tensors[f"{key}.lora_A.weight"] = rng.standard_normal((RANK, n_in), dtype=np.float32) * 0.01
            tensors[f"{key}.lora_B.weight"] = rng.standard_normal((n_out, RANK), dtype=np.float32) * 0.01
    adapter = work / "llama-1b-adapter"
    adapter.mkdir(exist_ok=True)
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": RANK, "lora_alpha": 2 * RANK,
                                                             "target_modules": list(TARGETS),
                                                             "base_model_name_or_path": str(base)}))
    lora = write_lora_gguf(adapter, work / "llama-1b.lora.gguf", base_dir=base, reporter=Reporter("quiet")).path
    return {"model": "Llama-3.2-1B shape (synthetic)", "adapter_bytes": lora.stat().st_size,
            "merged_bytes": q4_k_m_tensor_bytes(LLAMA_1B)}


def mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:,.1f} MB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ftpack-ship-size-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        rows = smollm2(work)
        one_b = llama_1b(work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    sizes = rows.pop()
    print("| model | registered | shipped as | bytes written to the store | bytes uploaded | registration time |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['mode']} | {r['weights']} | {mb(r['store_bytes'])} | {mb(r['uploaded_bytes'])} "
              f"| {r['seconds']:.2f} s |")
    print()
    print("| model | base GGUF (reused) | adapter GGUF | merged Q4_K_M GGUF | adapter / merged |")
    print("|---|---|---|---|---|")
    print(f"| SmolLM2-135M | {mb(sizes['base_bytes'])} (Q4_1) | {mb(sizes['adapter_bytes'])} | "
          f"{mb(sizes['merged_bytes'])} | {sizes['adapter_bytes'] / sizes['merged_bytes']:.1%} |")
    print(f"| {one_b['model']} | as merged | {mb(one_b['adapter_bytes'])} | {mb(one_b['merged_bytes'])} (tensors, "
          f"computed) | {one_b['adapter_bytes'] / one_b['merged_bytes']:.1%} |")
    print(json.dumps({"smollm2": rows, "sizes": sizes, "llama_1b": one_b}), file=sys.stderr)


if __name__ == "__main__":
    main()
