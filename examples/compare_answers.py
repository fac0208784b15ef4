"""Show what fine-tuning changed: the base model and the built model answer the same
held-out questions (phrasings not in the training data), side by side.

    python examples/compare_answers.py builds/demo-qa [--questions examples/heldout.jsonl] [-n 5]

Both run in llama.cpp (as in Ollama) with the build's chat template. Exits 1 when the
fine-tuned model answers none of the questions correctly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ftpack.inference.heldout import ask_all, build_outputs, read_heldout
from ftpack.training.bases import EMBEDDED_NAME, embedded_gguf_path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build_dir", type=Path)
    ap.add_argument("--questions", type=Path, default=HERE / "heldout.jsonl")
    ap.add_argument("-n", type=int, default=6, help="how many questions (default 6)")
    args = ap.parse_args()

    tuned, template, base = build_outputs(args.build_dir)
    records = read_heldout(args.questions)[: args.n]
    tuned_answers = ask_all(tuned, records, template_name=template)
    base_answers = None
    if base == EMBEDDED_NAME:  # the base as shipped (GGUF) answers the same questions
        base_answers = ask_all(embedded_gguf_path(), records, template_name=template)

    for i, t in enumerate(tuned_answers):
        print(f"\nQ: {t.question}   (a correct answer mentions: {', '.join(t.keywords)})")
        if base_answers:
            b = base_answers[i]
            print(f"  base       [{'right' if b.correct else 'wrong'}]: {b.answer}")
        print(f"  fine-tuned [{'right' if t.correct else 'wrong'}]: {t.answer}")
    right = sum(t.correct for t in tuned_answers)
    summary = f"\nfine-tuned: {right}/{len(tuned_answers)} right"
    if base_answers:
        summary += f"; base: {sum(b.correct for b in base_answers)}/{len(base_answers)} right"
    print(summary)
    return 0 if right else 1


if __name__ == "__main__":
    sys.exit(main())
