"""`ftpack verify BUILD|GGUF`: the build's own check, for any build folder or GGUF."""

from __future__ import annotations

import json

from runnable_gguf import tiny_ggufs  # noqa: F401


def _events(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_verify_a_gguf_that_answers_and_stops(run_cli):
    """The embedded SmolLM2 (a real chat model) answers with its own ChatML template and stops."""
    from ftpack.training.bases import embedded_gguf_path

    result = run_cli("verify", embedded_gguf_path(), "--max-answer-tokens", "256", "--json")
    assert result.exit_code == 0, result.output
    events = _events(result)
    report = next(e["data"] for e in events if e["event"] == "result")
    assert report["stopped"] and report["template"] == "chatml" and report["answer"].strip()
    assert report["max_answer_tokens"] == 256 and report["answer_tokens"] <= 256
    assert "answers and stops" in events[-1]["message"]


def test_verify_a_gguf_that_does_not_stop_names_the_limit(run_cli, tiny_ggufs):
    """The tiny random Llama never ends a turn: exit 1, and the message says which limit it hit."""
    result = run_cli("verify", tiny_ggufs["Q4_K_M"], "--max-answer-tokens", "8", "--reference", tiny_ggufs["f16"])
    assert result.exit_code == 1
    assert "did not stop" in result.output and "max_answer_tokens = 8" in result.output


def test_verify_checks_its_flags_like_build(run_cli, tiny_ggufs, tmp_path):
    result = run_cli("verify", tiny_ggufs["Q4_K_M"], "--template", "chatlm")
    assert result.exit_code == 2 and "chatlm" in result.output
    result = run_cli("verify", tiny_ggufs["Q4_K_M"], "--max-answer-tokens", "0")
    assert result.exit_code == 2 and "max_answer_tokens" in result.output
    result = run_cli("verify", tmp_path / "nothing-here")
    assert result.exit_code == 2 and "Not found" in result.output
