"""The model card (report.md) and the loss plot it shows."""

from __future__ import annotations

from pathlib import Path

import pytest


def _pixels_near(png: Path, rgb: tuple[int, int, int], tol: int = 12) -> int:
    import numpy as np
    from matplotlib.image import imread

    img = (imread(png)[..., :3] * 255).round().astype(int)
    return int((np.abs(img - np.array(rgb)).max(axis=-1) <= tol).sum())


def test_loss_plot_draws_train_line_and_eval_points(tmp_path):
    from matplotlib.image import imread

    from ftpack.training.lossplot import plot_loss

    rows = [{"step": s, "loss": 3.0 / s} for s in range(1, 11)] + [{"step": 10, "eval_loss": 0.5}]
    png = plot_loss(rows, tmp_path / "train" / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert imread(png).shape[:2] == (400, 640)
    assert _pixels_near(png, (31, 119, 180)) > 200  # the train curve (matplotlib's tab:blue)
    assert _pixels_near(png, (214, 39, 40)) > 20  # the eval point (tab:red)
    assert not list(png.parent.glob("*.partial*"))  # written atomically


def test_loss_plot_without_any_loss_is_still_an_image(tmp_path):
    from ftpack.training.lossplot import plot_loss

    png = plot_loss([], tmp_path / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _pixels_near(png, (31, 119, 180)) == 0


def _manifest(tmp_path: Path, *, verify: bool = True):
    """A build.json as a finished build writes it (no model needed to render a card)."""
    from ftpack.core.manifest import Manifest, OutputRecord, StageRecord

    def rec(metrics=None, outputs=(), versions=None, main=None):
        return StageRecord(status="done", metrics=metrics or {}, main_output=main,
                           outputs=[OutputRecord(p, 1000, sha, 0) for p, sha in outputs],
                           versions=versions or {"ftpack": "9.9", "torch": "2.14.0"})

    stages = {
        "data": rec({"template": "chatml", "format": "messages", "records": 24, "train_records": 23,
                     "eval_records": 1, "tokens": 480, "max_tokens": 21}, [("data/train.jsonl", "a" * 64)]),
        "train": rec({"method": "lora", "steps": 30, "trainable_parameters": 1000, "total_parameters": 100000,
                      "base": "tiny", "learning_rate": 0.005,
                      "settings": {"method": "lora", "learning_rate": 0.005, "lora_r": 8}},
                     versions={"ftpack": "9.9", "torch": "2.15.0"}),
        "quantize": rec({"quant": "Q4_K_M", "file_type": 15, "bytes": 300, "input_bytes": 1000},
                        [("gguf/x.Q4_K_M.gguf", "b" * 64)], main="gguf/x.Q4_K_M.gguf"),
    }
    if verify:
        stages["verify"] = rec({"question": "Say hello to Ada.", "answer": "Hello, Ada!", "finish_reason": "stop",
                                "answer_tokens": 5, "max_answer_tokens": 22, "limit_reason": "longest answer + 25%",
                                "template": "chatml", "fidelity": {"tokens": 100, "perplexity_reference": 2.0,
                                                                   "perplexity_quantized": 2.2,
                                                                   "perplexity_ratio": 1.1,
                                                                   "top1_agreement": 0.9}})
    config = {"name": "x", "base": "tiny", "data": "/d/hello.jsonl", "format": "auto", "method": "lora",
              "quant": "Q4_K_M", "register": "none", "verify": verify, "lora_r": 16, "max_seq_length": 64}
    return Manifest(path=tmp_path / "build.json", name="x", config=config, stages=stages, updated="now")


def test_card_holds_each_fact_once_with_whole_digests(tmp_path):
    from ftpack.model_card import render_model_card

    card = render_model_card(_manifest(tmp_path), data_sha256="c" * 64)
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in card.splitlines()
            if line.startswith("| ")]
    keys = [r[0] for r in rows if len(r) == 2 and r[0]]
    assert len(keys) == len(set(keys))
    assert "| format | messages |" in card and "| format | auto |" not in card  # what was detected, once
    assert "| quantization type | Q4_K_M |" in card and card.count("Q4_K_M |") == 1
    for sha in ("a" * 64, "b" * 64, "c" * 64):
        assert f"`{sha}`" in card
    assert "| perplexity, F16 -> quantized | 2 -> 2.2 |" in card and "| top-1 token agreement | 90.0% |" in card
    assert "| trainable parameters | 1,000 of 100,000 (1.00%) |" in card
    assert "| torch | 2.14.0 (data, quantize, verify); 2.15.0 (train) |" in card  # a resumed build says so
    assert "Verified: answers and stops within 22 tokens" in card
    assert "| lora_r | 8 |" in card and "| learning_rate | 0.005 |" in card  # as training recorded them


def test_card_of_a_build_trained_before_settings_were_recorded_shows_the_config(tmp_path):
    from ftpack.model_card import render_model_card

    manifest = _manifest(tmp_path)
    del manifest.stages["train"].metrics["settings"]
    card = render_model_card(manifest)
    assert "| lora_r | 16 |" in card and "| max_seq_length | 64 |" in card


def test_card_says_when_verify_was_skipped(tmp_path):
    from ftpack.model_card import render_model_card

    card = render_model_card(_manifest(tmp_path, verify=False))
    assert "**Not verified**" in card and "Skipped (`--no-verify`)" in card
    assert "perplexity" not in card


def test_card_shows_base_and_tuned_heldout_answers(tmp_path):
    from ftpack.model_card import render_model_card

    heldout = {"file": "q.jsonl", "questions": 2, "tuned_correct": 1, "base_correct": 0, "base": "the base GGUF b.gguf",
               "answers": [{"question": "Who founded it?", "keywords": ["Halvard"], "tuned": "Maren Halvard.",
                            "tuned_correct": True, "base": "I don't know.", "base_correct": False},
                           {"question": "Price?", "keywords": ["89"], "tuned": "It is $79 | cheap",
                            "tuned_correct": False, "base": "Free.", "base_correct": False}]}
    card = render_model_card(_manifest(tmp_path), heldout=heldout)
    assert "Fine-tuned: **1/2** right; base (the base GGUF b.gguf): **0/2**." in card
    assert "| question | expects | base | fine-tuned |" in card
    assert "| Who founded it? | Halvard | ❌ I don't know. | ✅ Maren Halvard. |" in card
    assert "| Price? | 89 | ❌ Free. | ❌ It is $79 \\| cheap |" in card  # a '|' in an answer keeps the table


def test_base_gguf_is_the_file_given_or_none_for_a_hugging_face_folder(tmp_path):
    from ftpack.model_card import base_gguf

    gguf = tmp_path / "base.Q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    assert base_gguf(str(gguf))[0] == gguf
    path, why = base_gguf(str(tmp_path))
    assert path is None and "not a GGUF" in why


def test_loss_summary_reads_first_last_and_lowest(tmp_path):
    from ftpack.model_card import loss_summary

    csv_path = tmp_path / "loss.csv"
    csv_path.write_text("step,epoch,loss,eval_loss,learning_rate,grad_norm\n1,0.1,3.0,,1e-3,1\n2,0.2,1.0,,1e-3,1\n"
                        "3,0.3,1.5,1.7,1e-3,1\n", encoding="utf-8")
    s = loss_summary(csv_path)
    assert (s["first_train_loss"], s["last_train_loss"], s["min_train_loss"], s["min_train_loss_step"]) == \
        (3.0, 1.5, 1.0, 2)
    assert (s["last_eval_loss"], s["min_eval_loss"]) == (1.7, 1.7)
    assert loss_summary(tmp_path / "missing.csv") == {}


def test_heldout_answers_get_the_verify_stages_limit(tmp_path):
    """Held-out answers are cut where the smoke test cuts answers (the longest training answer
    plus a margin, as build.json's verify record says), not at a fixed 96 tokens: a babbling
    base takes less time, and the card says which limit applied. Without a verify record:
    the fixed default."""
    from types import SimpleNamespace

    from ftpack.model_card import HELDOUT_ANSWER_TOKENS, heldout_answer_limit, render_model_card

    manifest = _manifest(tmp_path)
    manifest.stages["verify"].metrics.update(max_answer_tokens=58,
                                             limit_reason="the longest training answer, 42 tokens, + 16")
    tokens, why = heldout_answer_limit(SimpleNamespace(manifest=manifest, build_dir=tmp_path))
    assert tokens == 58 and "42 tokens, + 16" in why
    unverified = _manifest(tmp_path, verify=False)
    assert heldout_answer_limit(SimpleNamespace(manifest=unverified, build_dir=tmp_path))[0] == HELDOUT_ANSWER_TOKENS

    heldout = {"file": "q.jsonl", "questions": 1, "tuned_correct": 1, "base_correct": None, "base": "not a GGUF",
               "max_answer_tokens": tokens, "limit_reason": why,
               "answers": [{"question": "Who?", "keywords": ["Ada"], "tuned": "Ada.", "tuned_correct": True}]}
    card = render_model_card(manifest, heldout=heldout)
    assert "in at most 58 tokens (the verify stage's limit: the longest training answer, 42 tokens, + 16)" in card
