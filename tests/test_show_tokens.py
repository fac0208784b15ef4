"""`ftpack data FILE --base B --show-tokens N`: what the model trains on, token by token."""

from __future__ import annotations

import json


def _records(path, rows):
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows), encoding="utf-8")
    return path


ROWS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 4."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},
     {"role": "assistant", "content": "Goodbye."}],
    [{"role": "user", "content": "never shown"}, {"role": "assistant", "content": "third"}],
]


def test_json_objects_match_the_training_tokenizer(tiny_llama, tmp_path, run_cli):
    from ftpack.training.bases import load_tokenizer
    from ftpack.training.templates import load_template, tokenizer_adds_bos

    data = _records(tmp_path / "d.jsonl", ROWS)
    result = run_cli("--json", "data", data, "--base", tiny_llama, "--template", "chatml", "--show-tokens", "2")
    assert result.exit_code == 0, result.output
    views = [json.loads(line) for line in result.stdout.splitlines() if '"event": "tokens"' in line]
    assert [v["record"] for v in views] == [0, 1]  # the first N, in file order

    tok = load_tokenizer(tiny_llama)
    tpl = load_template("chatml")
    for view, messages in zip(views, ROWS):
        assert len(view["input_ids"]) == len(view["train"]) and set(view["train"]) == {0, 1}
        assert view["input_ids"] == tok(view["text"], add_special_tokens=False)["input_ids"]
        if tokenizer_adds_bos(tok):  # BOS written as its token text, once
            assert view["text"].startswith(tok.bos_token) and view["input_ids"].count(tok.bos_token_id) == 1
        trained = tok.decode([i for i, t in zip(view["input_ids"], view["train"]) if t])
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        assert trained == "".join(a + tpl.end_of_turn for a in answers)  # answers and their end of turn only
        assert "never shown" not in view["text"]


def test_rich_output_shows_counts(tiny_llama, tmp_path, run_cli):
    data = _records(tmp_path / "d.jsonl", ROWS)
    result = run_cli("data", data, "--base", tiny_llama, "--template", "chatml", "--show-tokens", "1")
    assert result.exit_code == 0, result.output
    assert "record 0:" in result.stdout and "trained" in result.stdout


def test_show_tokens_needs_a_base(tmp_path, run_cli):
    data = _records(tmp_path / "d.jsonl", ROWS)
    result = run_cli("data", data, "--show-tokens", "1")
    assert result.exit_code == 2 and "--base" in result.output


def test_build_system_prompt_is_trained_on(tiny_llama, tmp_path):
    """--system becomes the Modelfile SYSTEM, so conversations without one train with it too."""
    from ftpack.core.layout import BuildLayout
    from ftpack.core.report import get_reporter
    from ftpack.settings import build_config
    from ftpack.training.data import prepare_build_data, read_messages_jsonl

    data = _records(tmp_path / "d.jsonl", ROWS * 3)
    cfg = build_config("sys", None, {"base": str(tiny_llama), "data": data, "template": "chatml",
                                     "system": "You answer in French.", "eval_ratio": 0.0})
    layout = BuildLayout(tmp_path / "build")
    prepare_build_data(cfg, layout, get_reporter())
    trained = read_messages_jsonl(layout.train_file)
    assert len(trained) == 9
    for conv in trained:
        assert conv[0]["role"] == "system"
        assert conv[0]["content"] in ("You answer in French.", "Be brief.")  # an explicit one is kept
    assert sum(c[0]["content"] == "Be brief." for c in trained) == 3
