"""Training on the tiny Llama: every method learns, touches exactly what it should,
masks non-assistant tokens, resumes, and reports errors as FtpackError (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftpack.core.errors import FtpackError

CITIES = ["Paris", "Berlin", "Rome", "Tokyo"]


def _conversations(n: int = 24) -> list[dict]:
    rows = []
    for i in range(n):
        city = CITIES[i % 4]
        msgs = [{"role": "system", "content": "Be short."}] if i % 2 == 0 else []
        msgs += [{"role": "user", "content": f"What is the capital number {i % 5}?"},
                 {"role": "assistant", "content": f"The capital is {city}."}]
        if i % 3 == 0:  # multi-turn
            msgs += [{"role": "user", "content": "Thanks, and one more?"},
                     {"role": "assistant", "content": f"Yes: {CITIES[(i + 1) % 4]} is a city."}]
        rows.append({"messages": msgs})
    return rows


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _conversations()), encoding="utf-8")
    return path


def _train(tiny_llama, chat_file, out, **kw):
    from ftpack.training.train import train

    settings = dict(max_steps=6, per_device_train_batch_size=4, learning_rate=2e-3, save_steps=100,
                    lora_dropout=0.0)
    settings.update(kw)
    return train(tiny_llama, chat_file, out, **settings)


def _state_dict(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _logits(model_or_path, tokenizer_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_path))
    model = model_or_path
    if isinstance(model_or_path, (str, Path)):
        model = AutoModelForCausalLM.from_pretrained(str(model_or_path), dtype=torch.float32)
    ids = tok("What is the capital number 3?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model.eval()(ids).logits


@pytest.mark.parametrize("method,dora", [("lora", False), ("qlora", False), ("lora", True)],
                         ids=["lora", "qlora", "dora"])
def test_lora_methods_learn_and_change_logits(tiny_llama, chat_file, tmp_path, method, dora):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = _train(tiny_llama, chat_file, tmp_path / method, method=method, dora=dora)
    assert result.steps == 6
    assert result.train_loss < 0.6 * result.first_loss, (result.first_loss, result.train_loss)
    adapter = tmp_path / method / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert "{% generation %}" in (adapter / "chat_template.jinja").read_text().replace("{%- generation -%}",
                                                                                       "{% generation %}")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["use_dora"] is dora
    assert set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                          "down_proj"}
    before = _logits(tiny_llama, tiny_llama)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    after = _logits(PeftModel.from_pretrained(base, str(adapter)), tiny_llama)
    assert (after - before).abs().max().item() > 1e-2
    rows = (tmp_path / method / "loss.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and len(rows) == 1 + 6
    assert result.metrics["method"] == method and result.metrics["template"] == "chatml"


def test_sft_trains_only_top_blocks(tiny_llama, chat_file, tmp_path):
    result = _train(tiny_llama, chat_file, tmp_path / "sft", method="sft", trainable_layers=1, learning_rate=1e-3)
    assert result.train_loss < 0.6 * result.first_loss
    base, tuned = _state_dict(tiny_llama), _state_dict(tmp_path / "sft" / "model")
    assert set(base) == set(tuned)
    changed = {k for k in base if not base[k].equal(tuned[k])}
    trainable = lambda k: k.startswith(("model.layers.1.", "model.norm.", "lm_head."))  # noqa: E731
    assert {k for k in base if trainable(k)} == changed, sorted(changed ^ {k for k in base if trainable(k)})
    assert all(base[k].equal(tuned[k]) for k in base if k.startswith(("model.layers.0.", "model.embed_tokens.")))


def test_sft_train_embeddings_and_layer_count_check(tiny_llama, chat_file, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from ftpack.training.train import freeze_for_sft

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    names = freeze_for_sft(model, 1, train_embeddings=True)
    assert "model.embed_tokens.weight" in names and not any(n.startswith("model.layers.0.") for n in names)
    with pytest.raises(FtpackError) as err:
        freeze_for_sft(model, 5)
    assert err.value.code == 2 and "2 blocks" in err.value.message


def test_full_changes_every_block(tiny_llama, chat_file, tmp_path):
    result = _train(tiny_llama, chat_file, tmp_path / "full", method="full", learning_rate=1e-3)
    assert result.train_loss < 0.6 * result.first_loss
    base, tuned = _state_dict(tiny_llama), _state_dict(tmp_path / "full" / "model")
    block_keys = [k for k in base if k.startswith("model.layers.")]
    assert block_keys and all(not base[k].equal(tuned[k]) for k in block_keys)
    assert not base["lm_head.weight"].equal(tuned["lm_head.weight"])
    assert result.metrics["trainable_parameters"] == result.metrics["total_parameters"]


class _GrabBatch:
    """Callback factory: keeps the first collated training batch the Trainer will use."""

    def __new__(cls):
        from transformers import TrainerCallback

        class Grab(TrainerCallback):
            batch = None

            def on_train_begin(self, args, state, control, train_dataloader=None, **kw):
                Grab.batch = next(iter(train_dataloader))

        return Grab()


@pytest.mark.parametrize("train_on_prompts", [False, True])
def test_assistant_only_labels_on_real_batch(tiny_llama, chat_file, tmp_path, train_on_prompts):
    from transformers import AutoTokenizer

    grab = _GrabBatch()
    _train(tiny_llama, chat_file, tmp_path / "mask", method="lora", max_steps=1, per_device_train_batch_size=8,
           train_on_prompts=train_on_prompts, callbacks=[grab])
    batch = type(grab).batch
    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    ids, labels, attn = batch["input_ids"], batch["labels"], batch["attention_mask"]
    texts_seen = 0
    for row_ids, row_labels, row_attn in zip(ids.tolist(), labels.tolist(), attn.tolist()):
        full = tok.decode([i for i, a in zip(row_ids, row_attn) if a], skip_special_tokens=False)
        if train_on_prompts:  # every real token is a target
            assert all((lab == i) == bool(a) for i, lab, a in zip(row_ids, row_labels, row_attn))
            continue
        # contiguous runs of trained tokens == exactly the assistant replies (+ end-of-turn)
        runs = _trained_runs(row_ids, row_labels, tok)
        expected = [m["content"] + "<|im_end|>" for m in _conversation_for(full)["messages"]
                    if m["role"] == "assistant"]
        assert runs == expected, (full, runs)
        texts_seen += 1
    assert train_on_prompts or texts_seen == ids.shape[0]


def _trained_runs(row_ids, row_labels, tok) -> list[str]:
    runs, cur = [], []
    for i, lab in zip(row_ids, row_labels):
        if lab != -100:
            assert lab == i
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur, skip_special_tokens=False))
            cur = []
    if cur:
        runs.append(tok.decode(cur, skip_special_tokens=False))
    return runs


def test_packing_keeps_assistant_only_labels(tiny_llama, chat_file, tmp_path):
    from transformers import AutoTokenizer

    grab = _GrabBatch()
    _train(tiny_llama, chat_file, tmp_path / "pack", method="lora", max_steps=1,
           per_device_train_batch_size=4, packing=True, max_seq_length=256, callbacks=[grab])
    batch = type(grab).batch
    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    replies = {m["content"] + "<|im_end|>" for c in _conversations() for m in c["messages"]
               if m["role"] == "assistant"}
    ids, labels = batch["input_ids"].tolist(), batch["labels"].tolist()
    text = tok.decode(ids[0], skip_special_tokens=False)
    assert text.count("<|im_start|>user") > 4  # several conversations share one packed sequence
    runs = [r for row_ids, row_labels in zip(ids, labels) for r in _trained_runs(row_ids, row_labels, tok)]
    assert runs and all(r in replies for r in runs), runs


def _conversation_for(rendered: str) -> dict:
    """The source conversation whose user turns appear in ``rendered``."""
    for conv in _conversations():
        users = [m["content"] for m in conv["messages"] if m["role"] != "assistant"]
        assistants = [m["content"] for m in conv["messages"] if m["role"] == "assistant"]
        if all(u in rendered for u in users + assistants) and rendered.count("<|im_start|>") == len(conv["messages"]):
            return conv
    raise AssertionError(f"no source conversation for {rendered!r}")


def test_target_modules_default_override_and_wrong_name(tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM

    from ftpack.training.train import lora_target_modules

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    default = lora_target_modules(model)
    assert "lm_head" not in default and set(default) == {"q_proj", "k_proj", "v_proj", "o_proj",
                                                          "gate_proj", "up_proj", "down_proj"}
    assert lora_target_modules(model, ["q_proj,v_proj"]) == ["q_proj", "v_proj"]
    assert lora_target_modules(model, ["lm_head"]) == ["lm_head"]  # allowed when asked for
    with pytest.raises(FtpackError) as err:
        lora_target_modules(model, ["q_proj", "query_key_value"])
    assert err.value.code == 2
    assert "query_key_value" in err.value.message
    for valid in default + ["lm_head"]:
        assert valid in err.value.hint


def test_resume_continues_step_count(tiny_llama, chat_file, tmp_path):
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise KeyboardInterrupt  # as if the user pressed Ctrl-C after step 3

    class CountSteps(TrainerCallback):
        steps: list[int] = []

        def on_step_end(self, args, state, control, **kw):
            CountSteps.steps.append(state.global_step)

    out = tmp_path / "resume"
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_llama, chat_file, out, method="lora", max_steps=5, save_steps=2, callbacks=[Crash()])
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and not (out / "adapter").exists()
    half = out / "checkpoints" / "checkpoint-4"  # as if killed while saving a later checkpoint
    half.mkdir()
    (half / "adapter_model.safetensors").write_bytes(b"half-written")
    result = _train(tiny_llama, chat_file, out, method="lora", max_steps=5, save_steps=2, callbacks=[CountSteps()])
    assert result.resumed_from == 2
    assert CountSteps.steps == [3, 4, 5] and result.steps == 5
    steps = [int(line.split(",")[0]) for line in (out / "loss.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert not (out / "checkpoints").exists()  # removed once the run finished
    with pytest.raises(FtpackError) as err:  # explicit --resume without a checkpoint
        _train(tiny_llama, chat_file, out, method="lora", max_steps=5, resume=True)
    assert err.value.code == 2


def test_changed_settings_do_not_resume(tiny_llama, chat_file, tmp_path):
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 2:
                raise KeyboardInterrupt

    out = tmp_path / "stale"
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_llama, chat_file, out, method="lora", max_steps=3, save_steps=2, callbacks=[Crash()])
    result = _train(tiny_llama, chat_file, out, method="lora", max_steps=3, learning_rate=1e-3)
    assert result.resumed_from is None and result.steps == 3


def test_bad_training_data_is_bad_input(tiny_llama, tmp_path):
    from ftpack.training.train import read_messages_jsonl

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"oops": 1}\n', encoding="utf-8")
    with pytest.raises(FtpackError) as err:
        read_messages_jsonl(bad)
    assert err.value.code == 2 and "bad.jsonl:2" in err.value.message
    with pytest.raises(FtpackError) as err:
        read_messages_jsonl(tmp_path / "missing.jsonl")
    assert err.value.code == 2


def test_train_stage_in_a_build(tiny_llama, chat_file, tmp_path):
    from ftpack.core.runner import Stage, StageResult, run_stages
    from ftpack.core.config import build_config
    from ftpack.training.train import run_train_stage

    def fake_data_stage(ctx):
        rows = chat_file.read_text(encoding="utf-8").splitlines()
        (ctx.stage_dir / "train.jsonl").write_text("\n".join(rows[:20]) + "\n", encoding="utf-8")
        (ctx.stage_dir / "eval.jsonl").write_text("\n".join(rows[20:]) + "\n", encoding="utf-8")
        return StageResult(outputs=[ctx.stage_dir / "train.jsonl", ctx.stage_dir / "eval.jsonl"],
                           main_output=ctx.stage_dir / "train.jsonl", metrics={"template": "chatml"})

    cfg = build_config("tiny", flag_values={"base": str(tiny_llama), "method": "lora", "max_steps": 3,
                                            "learning_rate": 2e-3})
    stages = [Stage("data", "fake", fake_data_stage), Stage("train", "fine-tune", run_train_stage)]
    manifest = run_stages(cfg, stages, tmp_path / "build")
    rec = manifest.stages["train"]
    assert rec.status == "done" and rec.main_output == "train/adapter"
    assert rec.metrics["steps"] == 3 and rec.metrics["final_eval_loss"] is not None
    assert rec.metrics["template"] == "chatml" and rec.metrics["base_path"] == str(Path(tiny_llama).resolve())
    paths = {o.path for o in rec.outputs}
    assert {"train/loss.csv", "train/loss.png", "train/adapter/adapter_model.safetensors"} <= paths
    assert "eval_loss" in (tmp_path / "build" / "train" / "loss.csv").read_text().splitlines()[0]


# -- the `ftpack train` command ------------------------------------------------------------

def _no_traceback(result) -> None:
    assert "Traceback" not in result.output and "Traceback" not in (result.stderr or "")


def test_cli_bad_inputs_exit_2(run_cli, tiny_llama, chat_file, tmp_path):
    cases = [
        (["--base", "no-such-model", "--data", chat_file], "no-such-model"),
        (["--base", tiny_llama, "--data", tmp_path / "missing.jsonl"], "Dataset not found"),
        (["--base", tiny_llama, "--data", chat_file, "--method", "lora", "--target-modules", "qkv_proj"],
         "qkv_proj"),
        (["--base", tiny_llama, "--data", chat_file, "--lora-r", "0"], "lora_r"),
    ]
    for args, expected in cases:
        result = run_cli("train", *args, "--out", tmp_path / "out")
        assert result.exit_code == 2, (args, result.output)
        assert expected in result.output + (result.stderr or ""), result.output
        _no_traceback(result)
    assert not (tmp_path / "out" / "adapter").exists()


def test_cli_trains_from_another_format(run_cli, tiny_llama, tmp_path):
    alpaca = tmp_path / "qa.json"
    alpaca.write_text(json.dumps([{"instruction": f"Name city {i}.", "output": CITIES[i % 4]} for i in range(12)]),
                      encoding="utf-8")
    out = tmp_path / "run"
    result = run_cli("--json", "train", "--base", tiny_llama, "--data", alpaca, "--method", "lora",
                     "--max-steps", "2", "--lr", "1e-3", "--out", out)
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    data = next(e["data"] for e in events if e["event"] == "result")
    assert data["method"] == "lora" and data["steps"] == 2 and data["template"] == "chatml"
    assert any(e["event"] == "progress" and e.get("total") == 2 for e in events)
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "loss.png").is_file()
    first = json.loads((out / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert first["messages"][-1]["role"] == "assistant"


def test_every_train_setting_reaches_train():
    """Each train-stage config key (= CLI flag) is a parameter of train(): none is dropped."""
    import inspect

    from ftpack.core.config import OPTIONS, build_config
    from ftpack.training.train import train, train_kwargs_from_config

    params = set(inspect.signature(train).parameters)
    train_keys = {o.key for o in OPTIONS if o.stage == "train"} | {"max_seq_length", "seed"}
    assert train_keys <= params, train_keys - params
    cfg = build_config("x", flag_values={"lora_r": 8, "target_modules": ["q_proj", "v_proj"], "dora": True})
    kwargs = train_kwargs_from_config(cfg)
    assert kwargs["lora_r"] == 8 and list(kwargs["target_modules"]) == ["q_proj", "v_proj"] and kwargs["dora"]
    assert train_keys - {"method"} <= set(kwargs) | {k for k in train_keys if getattr(cfg, k) is None}


def test_auto_method_says_which_and_why():
    import io

    from ftpack.core.report import Reporter
    from ftpack.training.train import choose_method

    out = io.StringIO()
    reporter = Reporter("json", out=out)
    assert choose_method("auto", "cpu", reporter) == "lora"
    assert choose_method("auto", "cuda", reporter) == "qlora"
    assert choose_method("SFT", "cpu", reporter) == "sft"
    messages = [json.loads(line)["message"] for line in out.getvalue().splitlines()]
    assert "lora" in messages[0] and "CUDA" in messages[0] and "qlora" in messages[1]
