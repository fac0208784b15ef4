"""Datasets: five formats → identical messages; every malformed input → FILE:LINE errors,
exit 2, nothing written; deterministic eval split; token stats on the tiny tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from ftpack.training.data import (
    FORMATS,
    MAX_PROBLEMS,
    convert_record,
    count_tokens,
    detect_format,
    load_dataset,
    prepare_data,
    read_messages_jsonl,
    run_data_stage,
    split_eval,
)
from ftpack.core.errors import FtpackError

# The same three conversations, written in every format below.
SYSTEM = "You are the Trailbeam support bot."
QA = [
    ("What does E3 mean?", "", "The battery is too cold to charge."),
    ("Say hello in French.", "Be brief.", "Bonjour !"),
    ("Unicode: café 東京 “quoted”\n  indented", "", "Oui — ✓ 100 %"),
]


def _user(instruction: str, extra: str) -> str:
    return f"{instruction}\n\n{extra}" if extra else instruction


def expected(with_system: bool) -> list[list[dict]]:
    out = []
    for instruction, extra, answer in QA:
        conv = [{"role": "user", "content": _user(instruction, extra)}, {"role": "assistant", "content": answer}]
        out.append(([{"role": "system", "content": SYSTEM}] if with_system else []) + conv)
    return out


def records(fmt: str, with_system: bool) -> list[dict]:
    recs = []
    for i, (instruction, extra, answer) in enumerate(QA):
        user = _user(instruction, extra)
        if fmt == "sharegpt":
            turns = ([{"from": "system", "value": SYSTEM}] if with_system else []) + [
                {"from": "human", "value": user}, {"from": "gpt", "value": answer}]
            rec = {"id": f"r{i}", "conversations": turns}
        elif fmt == "messages":
            rec = {"messages": expected(with_system)[i]}
        elif fmt == "alpaca":
            rec = {"instruction": instruction, "input": extra, "output": answer}
        elif fmt == "io":
            rec = {"input": user, "output": answer}
        else:
            rec = {"prompt": user, "completion": answer}
        if with_system and fmt in ("alpaca", "io"):
            rec["system"] = SYSTEM
        recs.append(rec)
    return recs


def write(path: Path, recs: list, container: str, bom: bool = False) -> Path:
    if container == "json":
        text = json.dumps(recs, ensure_ascii=False, indent=2)
    else:
        text = "\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + "\n"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


@pytest.mark.parametrize("container", ["jsonl", "json"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_loads_to_identical_messages(tmp_path, fmt, container):
    path = write(tmp_path / f"d.{container}", records(fmt, False), container)
    ds = load_dataset(path)
    assert ds.format == fmt
    assert ds.conversations == expected(False)
    assert load_dataset(path, fmt).conversations == expected(False)  # forced == detected


@pytest.mark.parametrize("fmt", ["sharegpt", "messages", "alpaca", "io"])
def test_formats_with_a_system_prompt_agree(tmp_path, fmt):
    path = write(tmp_path / "d.jsonl", records(fmt, True), "jsonl", bom=True)
    assert load_dataset(path).conversations == expected(True)


def test_multi_turn_sharegpt_messages_and_conversational_prompt_completion_agree(tmp_path):
    conv = [{"role": "system", "content": "S"}, {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d"}]
    share = {"conversations": [{"from": {"system": "system", "user": "human", "assistant": "gpt"}[m["role"]],
                                "value": m["content"]} for m in conv]}
    pc = {"prompt": conv[:-1], "completion": conv[-1:]}
    for rec in (share, {"messages": conv}, pc):
        path = write(tmp_path / "m.jsonl", [rec], "jsonl")
        assert load_dataset(path).conversations == [conv]


def test_detect_format():
    assert [detect_format(r) for r in (records(f, False)[0] for f in FORMATS)] == list(FORMATS)
    assert detect_format({"foo": 1}) is None and detect_format([1]) is None


def test_bom_and_blank_lines_are_tolerated(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps(r) for r in records("io", False)]
    path.write_bytes(b"\xef\xbb\xbf" + ("\n\n".join(lines) + "\n\n").encode())
    assert load_dataset(path).conversations == expected(False)


# -- malformed inputs -----------------------------------------------------------------------

def _jsonl(*lines: str) -> str:
    return "\n".join(lines) + "\n"


GOOD = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
MALFORMED = {
    "invalid_json": (_jsonl(GOOD, '{"messages": [', GOOD), 2, "invalid JSON"),
    "unknown_format": (_jsonl(GOOD, GOOD, json.dumps({"question": "q", "answer": "a"})), 3, "unknown format"),
    "missing_field": (_jsonl(json.dumps({"instruction": "x", "output": "y"}), json.dumps({"instruction": "x"})),
                      2, "missing field 'output'"),
    "empty_field": (_jsonl(json.dumps({"input": "q", "output": "a"}), json.dumps({"input": "  ", "output": "a"})),
                    2, "field 'input' is empty"),
    "empty_content": (_jsonl(GOOD, json.dumps({"messages": [{"role": "user", "content": ""},
                                                            {"role": "assistant", "content": "a"}]})),
                      2, "messages[0].content is empty"),
    "non_string_content": (_jsonl(json.dumps({"messages": [{"role": "user", "content": ["q"]},
                                                           {"role": "assistant", "content": "a"}]})),
                           1, "messages[0].content must be a string, got a list"),
    "non_string_value": (_jsonl(json.dumps({"conversations": [{"from": "human", "value": 42},
                                                              {"from": "gpt", "value": "a"}]})),
                         1, "conversations[0].value must be a string, got a number"),
    "roles_out_of_order": (_jsonl(GOOD, json.dumps({"messages": [
        {"role": "user", "content": "q"}, {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a"}]})),
        2, "messages[1]: roles out of order"),
    "system_not_first": (_jsonl(json.dumps({"messages": [
        {"role": "user", "content": "q"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]})),
        1, "messages[1]: a system message is only allowed first"),
    "assistant_first": (_jsonl(json.dumps({"conversations": [{"from": "gpt", "value": "a"},
                                                             {"from": "human", "value": "q"}]})),
                        1, "conversations[0]: roles out of order: expected 'user', got 'assistant'"),
    "not_ending_with_assistant": (_jsonl(GOOD, GOOD, json.dumps({"messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"}]})),
        3, "must end with an assistant message"),
    "unknown_role": (_jsonl(json.dumps({"conversations": [{"from": "human", "value": "q"},
                                                          {"from": "bot", "value": "a"}]})),
                     1, "conversations[1]: unknown role 'bot'"),
    "unknown_message_role": (_jsonl(GOOD, json.dumps({"messages": [{"role": "user", "content": "q"},
                                                                   {"role": "tool", "content": "a"}]})),
                             2, "messages[1]: unknown role 'tool'"),
    "not_an_object": (_jsonl(GOOD, "[1, 2]"), 2, "expected a JSON object, got a list"),
    "mixed_formats": (_jsonl(GOOD, GOOD, json.dumps({"input": "q", "output": "a"})), 3,
                      "record is in io format but the file is messages"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_input_gives_file_line_error_and_exit_2(tmp_path, run_cli, case):
    text, line, message = MALFORMED[case]
    path = tmp_path / "bad.jsonl"
    path.write_text(text, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = run_cli("data", path, "-o", out)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    flat = " ".join(result.output.split())  # the console may wrap long lines
    assert f"{path}:{line}: " in flat and message in flat, result.output
    assert not out.exists() and not list(tmp_path.glob("out*"))  # nothing written
    with pytest.raises(FtpackError) as exc:  # the library says the same
        load_dataset(path)
    assert exc.value.code == 2 and f"{path}:{line}: " in exc.value.message


@pytest.mark.parametrize("text,message", [("", "is empty"), ("  \n\n", "is empty"), ("[]", "no records"),
                                          ("\ufeff", "is empty")])
def test_empty_files_are_a_clear_error(tmp_path, run_cli, text, message):
    path = tmp_path / "empty.json"
    path.write_text(text, encoding="utf-8")
    result = run_cli("data", path)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_missing_file_and_invalid_utf8(tmp_path, run_cli):
    result = run_cli("data", tmp_path / "nope.jsonl")
    assert result.exit_code == 2 and "not found" in result.output
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(GOOD.encode() + b"\n" + '{"input": "caf\xe9", "output": "x"}'.encode("latin-1") + b"\n")
    result = run_cli("data", bad)
    assert result.exit_code == 2 and f"{bad}:2: not valid UTF-8" in " ".join(result.output.split())


def test_all_problems_are_reported_with_their_lines(tmp_path):
    path = tmp_path / "many.jsonl"
    lines = [GOOD, "", "{oops", GOOD, json.dumps({"messages": [{"role": "user"}]}), "", json.dumps({"messages": []})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(FtpackError) as exc:
        load_dataset(path)
    msg = exc.value.message
    assert "3 problems" in msg
    assert f"{path}:3: invalid JSON" in msg
    assert f"{path}:5: missing messages[0].content" in msg
    assert f"{path}:7: field 'messages' is empty" in msg


def test_problem_list_is_capped(tmp_path):
    path = tmp_path / "cap.jsonl"
    path.write_text("\n".join(["{bad"] * (MAX_PROBLEMS + 10)) + "\n", encoding="utf-8")
    with pytest.raises(FtpackError) as exc:
        load_dataset(path)
    msg = exc.value.message
    assert f"{MAX_PROBLEMS + 10} problems" in msg and "... and 10 more" in msg
    assert msg.count("invalid JSON") == MAX_PROBLEMS
    assert f"{path}:{MAX_PROBLEMS}: " in msg and f"{path}:{MAX_PROBLEMS + 1}: " not in msg


def test_json_array_errors_give_the_item_line_and_index(tmp_path):
    recs = records("messages", False)
    recs[1] = {"messages": [{"role": "user", "content": "q"}]}  # ends with user
    path = write(tmp_path / "arr.json", recs, "json")
    item_line = path.read_text().splitlines().index("  {", 2) + 1  # where item 1 starts
    assert item_line > 2
    with pytest.raises(FtpackError) as exc:
        load_dataset(path)
    assert f"{path}:{item_line}: item 1: messages must end with an assistant message" in exc.value.message
    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"input": "q", "output": "a"},\n  {"input": "q" "output": "a"}\n]\n')
    with pytest.raises(FtpackError) as exc:
        load_dataset(broken)
    assert f"{broken}:3: item 1: invalid JSON" in exc.value.message


def test_forced_format_that_does_not_fit_reports_missing_fields(tmp_path):
    path = write(tmp_path / "d.jsonl", records("io", False), "jsonl")
    with pytest.raises(FtpackError) as exc:
        load_dataset(path, "alpaca")
    assert f"{path}:1: missing field 'instruction'" in exc.value.message


def test_convert_record_is_pure():
    rec = {"instruction": "Do it", "input": "now", "output": "Done", "system": "S"}
    before = json.dumps(rec)
    msgs, errors = convert_record(rec, "alpaca")
    assert not errors and json.dumps(rec) == before
    assert msgs == [{"role": "system", "content": "S"}, {"role": "user", "content": "Do it\n\nnow"},
                    {"role": "assistant", "content": "Done"}]


# -- eval split -------------------------------------------------------------------------------

def _convs(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(n)]


def test_eval_split_is_deterministic_and_seeded():
    convs = _convs(200)
    a = split_eval(convs, 0.1, seed=1)
    assert a == split_eval(convs, 0.1, seed=1)
    assert a != split_eval(convs, 0.1, seed=2)
    train, ev = a
    assert len(ev) == 20 and len(train) == 180
    assert sorted(train + ev) == list(range(200)) and not set(train) & set(ev)


def test_default_eval_ratio_and_duplicates_stay_together(tmp_path):
    small = write(tmp_path / "small.jsonl", [{"messages": c} for c in _convs(19)], "jsonl")
    assert prepare_data(small).summary.eval_records == 0
    big = write(tmp_path / "big.jsonl", [{"messages": c} for c in _convs(40)], "jsonl")
    s = prepare_data(big).summary
    assert (s.eval_ratio, s.eval_records, s.train_records) == (0.05, 2, 38)
    assert prepare_data(big, eval_ratio=0.0).summary.eval_records == 0
    dup = _convs(30) + _convs(30)  # every conversation twice
    for seed in range(5):
        train, ev = split_eval(dup, 0.2, seed)
        train_keys = {json.dumps(dup[i]) for i in train}
        assert ev and not any(json.dumps(dup[i]) in train_keys for i in ev)
    assert split_eval(_convs(1) * 5, 0.5, 0) == ([0, 1, 2, 3, 4], [])  # one distinct record: all train


# -- tokens and stats on the tiny tokenizer ------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


def test_token_counts_match_trl_tokenization(tiny_tokenizer):
    from ftpack.training.templates import load_template, training_chat_template

    tpl = load_template("chatml")
    convs = expected(True)
    jinja = training_chat_template(tpl, tiny_tokenizer)
    want = [len(tiny_tokenizer.apply_chat_template(c, chat_template=jinja, tokenize=True,
                                                   return_dict=True)["input_ids"]) for c in convs]
    assert count_tokens(convs, tiny_tokenizer, tpl) == want
    assert all(n > 10 for n in want)


def test_stats_long_records_and_drop_long(tmp_path, tiny_tokenizer):
    from ftpack.training.templates import load_template

    tpl = load_template("chatml")
    convs = _convs(10)
    convs[3][1]["content"] = "long " * 200
    convs[7][0]["content"] = "long " * 200
    convs.append(convs[0])  # a duplicate
    path = write(tmp_path / "d.jsonl", [{"messages": c} for c in convs], "jsonl")
    lengths = count_tokens(convs, tiny_tokenizer, tpl)
    s = prepare_data(path, template=tpl, tokenizer=tiny_tokenizer, max_seq_length=64).summary
    assert (s.records, s.messages, s.turns, s.duplicates, s.too_long, s.dropped_long) == (11, 22, 11, 1, 2, 0)
    assert s.tokens == {"total": sum(lengths), "mean": round(sum(lengths) / 11, 1), "max": max(lengths),
                        "min": min(lengths)}
    assert s.stop_collisions == 0
    dropped = prepare_data(path, template=tpl, tokenizer=tiny_tokenizer, max_seq_length=64, drop_long=True)
    assert dropped.summary.dropped_long == 2 and len(dropped.train) + len(dropped.eval) == 9
    assert all("long long" not in m["content"] for c in dropped.train for m in c)


def test_data_command_with_base_counts_tokens_and_writes_split(tmp_path, run_cli, tiny_llama):
    path = write(tmp_path / "d.json", [{"messages": c} for c in _convs(25)], "json")
    out = tmp_path / "norm.jsonl"
    result = run_cli("--json", "data", path, "--base", tiny_llama, "--eval-ratio", "0.2", "--seed", "3", "-o", out)
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    data = next(e["data"] for e in events if e["event"] == "result")
    assert data["template"] == "chatml" and data["format"] == "messages"
    assert data["tokens"]["total"] > 0 and (data["train_records"], data["eval_records"]) == (20, 5)
    train = read_messages_jsonl(out)
    ev = read_messages_jsonl(tmp_path / "norm.eval.jsonl")
    assert len(train) == 20 and len(ev) == 5
    assert sorted(map(json.dumps, train + ev)) == sorted(map(json.dumps, _convs(25)))
    # same seed, same split
    out2 = tmp_path / "again.jsonl"
    run_cli("data", path, "--eval-ratio", "0.2", "--seed", "3", "-o", out2)
    assert out2.read_text() == out.read_text()


def test_run_data_stage_writes_splits_stats_and_template(tmp_path, tiny_llama):
    from ftpack.core.layout import BuildLayout
    from ftpack.core.report import Reporter

    path = write(tmp_path / "d.jsonl", records("sharegpt", True) * 1 + [{"messages": c} for c in []], "jsonl")
    cfg = SimpleNamespace(data=path, format="auto", template=None, base=str(tiny_llama), max_seq_length=2048,
                          drop_long=False, eval_ratio=0.34, seed=7, trust_remote_code=False, allow_pickle=False)
    stage_dir = tmp_path / "build" / "data"
    stage_dir.mkdir(parents=True)
    (stage_dir / "eval.jsonl").write_text("stale split of an earlier run\n", encoding="utf-8")
    ctx = SimpleNamespace(config=cfg, stage_dir=stage_dir, build_dir=tmp_path / "build",
                          layout=BuildLayout(tmp_path / "build"), reporter=Reporter("quiet"))
    result = run_data_stage(ctx)
    assert result.main_output == stage_dir / "train.jsonl"
    assert result.metrics["template"] == "chatml"  # from the tiny tokenizer's own ChatML template
    assert (result.metrics["records"], result.metrics["train_records"], result.metrics["eval_records"]) == (3, 2, 1)
    assert result.metrics["tokens"] > 0
    stats = json.loads((stage_dir / "stats.json").read_text())
    assert stats["template"] == "chatml" and stats["format"] == "sharegpt"
    written = read_messages_jsonl(stage_dir / "train.jsonl") + read_messages_jsonl(stage_dir / "eval.jsonl")
    assert sorted(map(json.dumps, written)) == sorted(map(json.dumps, expected(True)))
    assert set(result.outputs) == {stage_dir / "train.jsonl", stage_dir / "eval.jsonl", stage_dir / "stats.json",
                                   stage_dir / "vocab.gguf"}  # the vocabulary the tokenization check used
    assert result.metrics["tokenization_equal"] is True and result.metrics["tokenization_checked"] == 3
    assert not list(stage_dir.glob("*.partial*"))
    cfg.eval_ratio = 0.0  # no eval split now: the earlier eval.jsonl must not stay behind
    result = run_data_stage(ctx)
    assert not (stage_dir / "eval.jsonl").exists() and result.metrics["eval_records"] == 0


def test_stop_strings_inside_records_are_counted(tmp_path, run_cli):
    convs = _convs(3)
    convs[1][1]["content"] = "Sure. USER: this looks like a new turn"
    path = write(tmp_path / "d.jsonl", [{"messages": c} for c in convs], "jsonl")
    from ftpack.training.templates import load_template

    assert prepare_data(path, template=load_template("vicuna_v1.1")).summary.stop_collisions == 1
    assert prepare_data(path, template=load_template("chatml")).summary.stop_collisions == 0
    result = run_cli("data", path, "--template", "vicuna_v1.1")
    assert result.exit_code == 0 and "stop string" in result.output


def test_data_with_a_hub_alias_fetches_the_tokenizer_not_the_weights(tmp_path, tiny_llama):
    """Defect 11: `ftpack data --base ALIAS` needs the tokenizer (and config.json) only; the
    weights are fetched by training. A hub double serves the alias's repo (the tiny Llama)."""
    import os
    import subprocess
    import sys

    from fake_hub import FakeHub
    from ftpack.training.bases import ALIASES

    path = write(tmp_path / "d.jsonl", [{"messages": c} for c in _convs(6)], "jsonl")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with FakeHub(ALIASES["vicuna-7b"], tiny_llama) as hub:
        env["HF_ENDPOINT"] = hub.url
        proc = subprocess.run([sys.executable, "-m", "ftpack", "--json", "data", str(path), "--base", "vicuna-7b"],
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        result = next(json.loads(line)["data"] for line in proc.stdout.splitlines()
                      if line.startswith("{") and json.loads(line)["event"] == "result")
        assert result["tokens"]["total"] > 0  # the tokenizer was there
        assert {"tokenizer.json", "config.json"} <= set(hub.downloaded)
        assert not [f for f in hub.downloaded if f.endswith((".safetensors", ".bin"))], hub.downloaded
        # training later fetches the weights into the same snapshot
        proc = subprocess.run([sys.executable, "-c", "from ftpack.training.bases import resolve_base; "
                               "print(resolve_base('vicuna-7b').path)"], env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "model.safetensors" in hub.downloaded
        assert (Path(proc.stdout.strip().splitlines()[-1]) / "tokenizer.json").is_file()
