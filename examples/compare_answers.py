"""Show what fine-tuning changed: the base model and the built model answer the same
held-out questions (phrasings not in the training data), side by side.

    python examples/compare_answers.py builds/demo-qa [--questions examples/heldout.jsonl] [-n 6]

Both run in llama.cpp (as in Ollama) with the build's chat template. When the build's own
report stage already asked these questions (config ``heldout``, as in the demo), its
answers are shown from build.json instead of being generated again. Answers are scored
strictly (``ftpack.inference.heldout.states``): every key fact as whole words or a whole
number, so "12" does not count inside "120". Exits 1 when the fine-tuned model answers
none of the questions correctly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ftpack.inference.heldout import HeldoutResult, ask_all, build_outputs, read_heldout, result_of

HERE = Path(__file__).resolve().parent


def answers_from_report(build_dir: Path, questions: Path) -> tuple[list[HeldoutResult], list[HeldoutResult] | None] | None:
    """(fine-tuned, base) answers the report stage recorded for the questions in
    ``questions``, scored against that file's key facts; None when the build did not ask
    exactly these questions."""
    from ftpack.core.manifest import Manifest

    record = Manifest.load(build_dir).stages.get("report")
    held = (record.metrics or {}).get("heldout") if record is not None and record.status == "done" else None
    records = read_heldout(questions)
    if not held or [r["question"] for r in held["answers"]] != [r["question"] for r in records]:
        return None
    rows = held["answers"]
    tuned = [result_of(q, r["tuned"]) for q, r in zip(records, rows)]
    if not all("base" in r for r in rows):
        return tuned, None
    return tuned, [result_of(q, r["base"]) for q, r in zip(records, rows)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build_dir", type=Path)
    ap.add_argument("--questions", type=Path, default=HERE / "heldout.jsonl")
    ap.add_argument("-n", type=int, default=6, help="how many answers to show (default 6); all are scored")
    args = ap.parse_args()

    recorded = answers_from_report(args.build_dir, args.questions)
    if recorded is not None:
        tuned_answers, base_answers = recorded
    else:
        from ftpack.training.bases import EMBEDDED_NAME, embedded_gguf_path

        tuned, template, base = build_outputs(args.build_dir)
        records = read_heldout(args.questions)
        tuned_answers = ask_all(tuned, records, template_name=template)
        base_answers = None
        if base == EMBEDDED_NAME:  # the base as shipped (GGUF) answers the same questions
            base_answers = ask_all(embedded_gguf_path(), records, template_name=template)

    for i, t in enumerate(tuned_answers[: args.n]):
        print(f"\nQ: {t.question}   (a correct answer states: {', '.join(t.keywords)})")
        if base_answers:
            b = base_answers[i]
            print(f"  base       [{'right' if b.correct else 'wrong'}]: {b.answer}")
        print(f"  fine-tuned [{'right' if t.correct else 'wrong'}]: {t.answer}")
    right = sum(t.correct for t in tuned_answers)
    summary = f"\nfine-tuned: {right}/{len(tuned_answers)} right"
    if base_answers:
        summary += f"; base: {sum(b.correct for b in base_answers)}/{len(base_answers)} right"
    shown = min(args.n, len(tuned_answers))
    print(summary + (f" (all {len(tuned_answers)} questions scored, {shown} shown)" if shown < len(tuned_answers) else ""))
    return 0 if right else 1


if __name__ == "__main__":
    sys.exit(main())
