"""`ftpack build` on the real embedded SmolLM2-135M: the Q4_K_M model registered with
Ollama (the double) answers held-out phrasings of facts from the example data that the
base model does not know.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ollama_double.fixtures import ollama_double, ollama_models_dir  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parent.parent
KEYWORDS = ("Halvard", "Duluth", "LT3-440", "IP67")  # distinctive: no lucky guesses


def _facts_subset(tmp_path: Path) -> tuple[Path, list[dict]]:
    """The example records that teach the four facts, plus their held-out questions."""
    records = [json.loads(line) for line in (REPO / "examples/qa.messages.jsonl").read_text().splitlines()]
    held = [json.loads(line) for line in (REPO / "examples/heldout.jsonl").read_text().splitlines()]

    def teaches(rec: dict, kw: str) -> bool:
        return any(kw.lower() in m["content"].lower() for m in rec["messages"] if m["role"] == "assistant")

    subset = [r for r in records if any(teaches(r, kw) for kw in KEYWORDS)]
    questions = [h for h in held if h["keywords"][0] in KEYWORDS]
    assert len(questions) == len(KEYWORDS)
    train_questions = {m["content"] for r in subset for m in r["messages"] if m["role"] == "user"}
    assert not train_questions & {q["question"] for q in questions}  # really held out
    path = tmp_path / "facts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in subset), encoding="utf-8")
    return path, questions


@pytest.mark.slow
def test_smollm2_build_answers_heldout_questions(smollm2_base, tmp_path, run_cli, ollama_double):
    from ftpack.inference.heldout import ask_all, build_outputs
    from ftpack.training.bases import embedded_gguf_path

    data, questions = _facts_subset(tmp_path)
    out = tmp_path / "build"
    result = run_cli("--json", "build", "facts-qa", "--data", str(data), "--out", str(out),
                     "--method", "lora", "--template", "chatml", "--num-train-epochs", "8",
                     "--per-device-train-batch-size", "4", "--learning-rate", "2e-3",
                     "--lora-r", "16", "--lora-alpha", "32", "--lora-dropout", "0",
                     "--max-seq-length", "192", "--eval-ratio", "0", "--register", "server")
    assert result.exit_code == 0, result.output[-3000:]
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert {e["stage"]: e["status"] for e in events if e["event"] == "stage_end"}["register"] == "done"

    gguf, template, base = build_outputs(out)
    assert gguf.name == "facts-qa.Q4_K_M.gguf" and template == "chatml" and base == "smollm2-135m"
    tuned = ask_all(gguf, questions, template_name=template)
    before = ask_all(embedded_gguf_path(), questions, template_name=template)
    for b, t in zip(before, tuned):
        print(f"\nQ: {t.question}\n  base: {b.answer}\n  tuned: {t.answer}")
    assert not any(b.correct for b in before)  # the base cannot know these invented facts
    right = sum(t.correct for t in tuned)
    print(f"fine-tuned Q4_K_M: {right}/{len(tuned)} held-out questions right")
    assert right >= 2

    # The model Ollama holds is this very file, served with the training template.
    from ftpack.core.atomic import sha256_file

    manifest = json.loads(next((ollama_double.store.root / "manifests").rglob("facts-qa")).joinpath("latest")
                          .read_text())
    digests = {layer["mediaType"]: layer["digest"] for layer in manifest["layers"]}
    assert digests["application/vnd.ollama.image.model"] == "sha256:" + sha256_file(gguf)
    assert "application/vnd.ollama.image.template" in digests
