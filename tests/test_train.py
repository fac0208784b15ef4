"""Training on the tiny Llama: every method learns, touches exactly what it should,
masks non-assistant tokens, resumes, and reports errors as FtpackError (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftpack.core.errors import FtpackError
from ftpack.training.templates import load_template, template_of_weights

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
    assert result.metrics["method"] == method and result.template == "chatml"
    assert template_of_weights(adapter) == load_template("chatml")  # the whole format, beside the weights
    # qlora trained on a base really held in 4 bits: every linear layer of the 2 blocks (7 each) packed
    assert result.metrics["base_4bit_layers"] == (14 if method == "qlora" else 0)


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

    from ftpack.training.trainable import freeze_for_sft

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


def test_collated_batches_are_checked_against_the_checked_ids(tiny_llama, chat_file, tmp_path):
    """The train stage collates rows with the trainer's own collator and compares them with the
    ids the tokenization check proved (a wrong id, or a label moved off the trained tokens, stops
    it); packed rows are matched piece by piece."""
    from types import SimpleNamespace

    from ftpack.training.settings import TrainSettings
    from ftpack.training.token_check import check_collated_batches
    from ftpack.training.train import setup

    run = setup(tiny_llama, chat_file, tmp_path / "run", TrainSettings.of(None, method="lora", max_steps=1,
                                                                          per_device_train_batch_size=4),
                template="chatml")
    rows = [{"messages": c["messages"]} for c in _conversations()]
    assert run.batch_check["batch_check_rows"] == 24 and run.batch_check["batch_check_trained_tokens"] > 0
    trainer = run.trainer

    def tampered(change):
        def collate(features):
            batch = trainer.data_collator(features)
            change(batch)
            return batch
        return SimpleNamespace(train_dataset=trainer.train_dataset, data_collator=collate)

    ok = check_collated_batches(trainer, run.tokenizer, run.template, rows)
    assert (ok.rows, ok.against) == (24, "the checked training ids")

    def drop_a_label(batch):
        row = batch["labels"][3]
        row[(row != -100).nonzero()[0, 0]] = -100

    def swap_an_id(batch):
        batch["input_ids"][5, 2] += 1

    with pytest.raises(FtpackError, match="row 3: the loss is on"):
        check_collated_batches(tampered(drop_a_label), run.tokenizer, run.template, rows)
    with pytest.raises(FtpackError, match="row 5: input ids differ .* token 2"):
        check_collated_batches(tampered(swap_an_id), run.tokenizer, run.template, rows)
    packed = setup(tiny_llama, chat_file, tmp_path / "packed", TrainSettings.of(
        None, method="lora", max_steps=1, packing=True, max_seq_length=256), template="chatml")
    assert packed.batch_check["batch_check_rows"] == 24  # every conversation found in the packed row


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

    from ftpack.training.trainable import lora_target_modules

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    default = lora_target_modules(model)
    assert "lm_head" not in default and set(default) == {"q_proj", "k_proj", "v_proj", "o_proj",
                                                          "gate_proj", "up_proj", "down_proj"}
    assert lora_target_modules(model, ["q_proj,v_proj"]) == ["q_proj", "v_proj"]
    with pytest.raises(FtpackError) as err:
        lora_target_modules(model, ["q_proj", "query_key_value"])
    assert err.value.code == 2
    assert "query_key_value" in err.value.message
    for valid in default:
        assert valid in err.value.hint
    assert "lm_head" not in err.value.hint  # refused as a target (next test)


def test_lora_on_the_lm_head_is_refused_because_it_would_never_learn(tiny_llama):
    """TRL's fused LM head scores tokens with the head's base weight: an adapter on the head
    gets no gradient at all (shown here), so ftpack refuses it up front."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from ftpack.training.trainable import lora_target_modules

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    with pytest.raises(FtpackError) as err:
        lora_target_modules(model, ["q_proj,lm_head"])
    assert err.value.code == 2 and "lm_head" in err.value.message and "--method sft" in err.value.hint

    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "lm_head"], task_type="CAUSAL_LM"))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    add_fused_lm_head(peft_model.get_base_model(), outputs=("log_probs",))  # what SFTTrainer does
    ids = torch.randint(5, 300, (2, 12))
    (-peft_model(input_ids=ids, labels=ids, fused_lm_head=True).log_probs.sum()).backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    assert all(g is None for n, g in grads.items() if "lm_head" in n)
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "q_proj.lora_A" in n)


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


def test_evaluations_every_fifth_of_the_run_and_the_last_one_is_not_repeated(tiny_llama, chat_file, tmp_path):
    from transformers import TrainerCallback

    from ftpack.training.train import eval_interval

    assert eval_interval(9) is None and eval_interval(10) == 2 and eval_interval(136) == 28
    evals = tmp_path / "eval.jsonl"
    rows = chat_file.read_text(encoding="utf-8").splitlines()
    evals.write_text("\n".join(rows[:4]) + "\n", encoding="utf-8")

    class CountEvaluations(TrainerCallback):
        steps: list[int] = []

        def on_evaluate(self, args, state, control, **kw):
            CountEvaluations.steps.append(state.global_step)

    for steps, expected in ((10, [2, 4, 6, 8, 10]), (11, [3, 6, 9, 11]), (6, [6])):
        CountEvaluations.steps = []
        result = _train(tiny_llama, chat_file, tmp_path / str(steps), method="lora", max_steps=steps,
                        eval_file=evals, callbacks=[CountEvaluations()])
        assert CountEvaluations.steps == expected, steps  # the last step's evaluation is the final one
        logged = [h for h in result_history(tmp_path / str(steps)) if "eval_loss" in h]
        assert result.eval_loss == logged[-1]["eval_loss"] and logged[-1]["step"] == steps


def result_history(out: Path) -> list[dict]:
    import json

    return json.loads((out / "trainer_state.json").read_text(encoding="utf-8"))["log_history"]


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
    from ftpack.training.data import read_messages_jsonl

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"oops": 1}\n', encoding="utf-8")
    with pytest.raises(FtpackError) as err:
        read_messages_jsonl(bad)
    assert err.value.code == 2 and "bad.jsonl:2" in err.value.message
    with pytest.raises(FtpackError) as err:
        read_messages_jsonl(tmp_path / "missing.jsonl")
    assert err.value.code == 2


def test_train_stage_trains_with_the_data_stages_template(tiny_llama, chat_file, tmp_path):
    """The template is chosen once, by the data stage: training uses that choice (here
    vicuna_v1.1, although the base's tokenizer carries ChatML), saves it beside the
    weights, and template_of_build reads it back."""
    from ftpack.core.runner import Stage, StageResult, run_stages
    from ftpack.settings import build_config
    from ftpack.training.templates import template_of_build
    from ftpack.training.train import run_train_stage

    def fake_data_stage(ctx):
        rows = chat_file.read_text(encoding="utf-8").splitlines()
        (ctx.stage_dir / "train.jsonl").write_text("\n".join(rows[:20]) + "\n", encoding="utf-8")
        (ctx.stage_dir / "eval.jsonl").write_text("\n".join(rows[20:]) + "\n", encoding="utf-8")
        return StageResult(outputs=[ctx.stage_dir / "train.jsonl", ctx.stage_dir / "eval.jsonl"],
                           main_output=ctx.stage_dir / "train.jsonl", metrics={"template": "vicuna_v1.1"})

    cfg = build_config("tiny", flag_values={"base": str(tiny_llama), "method": "lora", "max_steps": 3,
                                            "learning_rate": 2e-3})
    stages = [Stage("data", "fake", fake_data_stage), Stage("train", "fine-tune", run_train_stage)]
    build = tmp_path / "build"
    manifest = run_stages(cfg, stages, build)
    rec = manifest.stages["train"]
    assert rec.status == "done" and rec.main_output == "train/adapter"
    assert rec.metrics["steps"] == 3 and rec.metrics["final_eval_loss"] is not None
    assert rec.metrics["base_path"] == str(Path(tiny_llama).resolve())
    assert rec.metrics["settings"]["learning_rate"] == 2e-3
    paths = {o.path for o in rec.outputs}
    assert {"train/loss.csv", "train/loss.png", "train/adapter/adapter_model.safetensors",
            "train/adapter/ftpack_template.json"} <= paths
    assert "eval_loss" in (build / "train" / "loss.csv").read_text().splitlines()[0]
    assert template_of_build(build) == load_template("vicuna_v1.1")
    assert "ASSISTANT:" in (build / "train" / "adapter" / "chat_template.jinja").read_text()


def test_template_of_build_before_and_after_training(tmp_path):
    """Before training: the data stage's record; after: the copy beside the weights (which
    wins, even if templates/ changed since); a `ftpack train` folder has no build.json."""
    from ftpack.core.errors import FtpackError
    from ftpack.core.manifest import Manifest, StageRecord
    from ftpack.training.templates import ChatTemplate, save_template, template_of_build

    build = tmp_path / "b"
    with pytest.raises(FtpackError):
        template_of_build(build)
    manifest = Manifest.load(build)
    manifest.stages["data"] = StageRecord(status="done", input_hash="x", metrics={"template": "llama3"})
    manifest.stages["train"] = StageRecord(status="running", input_hash="y", main_output="train/adapter")
    build.mkdir()
    manifest.save()
    assert template_of_build(build).name == "llama3"
    edited = ChatTemplate.from_dict({**load_template("llama3").as_dict(), "stop": ["<|eot_id|>", "END"]})
    save_template(edited, build / "train" / "adapter")
    manifest.stages["train"].status = "done"
    manifest.save()
    assert template_of_build(build).stop == ("<|eot_id|>", "END")
    (build / "build.json").unlink()
    assert template_of_build(build).stop == ("<|eot_id|>", "END")


def test_warmup_ratio_is_a_ratio_of_the_real_optimizer_steps(tiny_llama, chat_file, tmp_path):
    """--warmup-ratio 0.5 over 2 epochs of 24 records, batch 4, gradient accumulation 2:
    6 optimizer steps, 3 of them warm-up (transformers alone read a ratio of 1.0 as one
    step, and truncates a float in 4.x)."""
    from ftpack.training.settings import warmup_steps

    assert [warmup_steps(r, 100) for r in (0.0, 0.03, 0.5, 1.0)] == [0, 3, 50, 100]
    result = _train(tiny_llama, chat_file, tmp_path / "warm", method="lora", max_steps=-1, num_train_epochs=2,
                    per_device_train_batch_size=4, gradient_accumulation_steps=2, warmup_ratio=0.5,
                    lr_scheduler_type="linear", learning_rate=1e-3)
    assert result.steps == 6 and result.metrics["optimizer_steps"] == 6 and result.metrics["warmup_steps"] == 3
    lrs = [float(r.split(",")[4]) for r in (tmp_path / "warm" / "loss.csv").read_text().splitlines()[1:]]
    # the rate logged at step k is the one step k used: 0, 1/3, 2/3 of the peak, the peak, then down
    assert lrs[0] < lrs[1] < lrs[2] < lrs[3] > lrs[4] > lrs[5] and lrs[3] == pytest.approx(1e-3), lrs
    full = _train(tiny_llama, chat_file, tmp_path / "warm1", method="lora", max_steps=4, warmup_ratio=1.0,
                  lr_scheduler_type="linear", learning_rate=1e-3)
    lrs = [float(r.split(",")[4]) for r in (tmp_path / "warm1" / "loss.csv").read_text().splitlines()[1:]]
    assert full.metrics["warmup_steps"] == 4 and lrs == sorted(lrs) and lrs[0] < lrs[-1], lrs


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


def test_train_settings_are_the_config_keys():
    """TrainSettings holds every train-stage config key (= CLI flag) with its default, is
    built from a BuildConfig or build.json's config alike, and train() takes each field."""
    import dataclasses

    from ftpack.core.config import OPTION_BY_KEY, OPTIONS, config_to_dict
    from ftpack.settings import build_config
    from ftpack.training.checkpoints import run_fingerprint
    from ftpack.training.settings import BOOKKEEPING, TrainSettings

    names = {f.name for f in dataclasses.fields(TrainSettings)}
    # report_to: bookkeeping outside every stage's inputs (a logging choice retrains nothing)
    assert names == {o.key for o in OPTIONS if o.stage == "train"} | {"max_seq_length", "seed", "report_to"}
    defaults = TrainSettings()
    assert all(getattr(defaults, k) == OPTION_BY_KEY[k].default for k in names)
    cfg = build_config("x", flag_values={"lora_r": 8, "target_modules": ["q_proj", "v_proj"], "dora": True,
                                         "warmup_ratio": 0.1})
    settings = TrainSettings.from_config(cfg)
    assert settings == TrainSettings.from_config(config_to_dict(cfg))
    assert (settings.lora_r, settings.target_modules, settings.dora, settings.warmup_ratio) == (
        8, ("q_proj", "v_proj"), True, 0.1)
    assert TrainSettings.of(settings, lora_r=4).lora_r == 4
    with pytest.raises(TypeError):
        TrainSettings.of(settings, lora_rank=4)
    hp = settings.hyper_parameters()
    assert set(hp) == names - set(BOOKKEEPING)
    base = run_fingerprint(hp, "chatml", Path("/b"), Path(__file__), None)
    for key in hp:  # every hyper-parameter is part of the resume fingerprint
        changed = {**hp, key: "changed"}
        assert run_fingerprint(changed, "chatml", Path("/b"), Path(__file__), None) != base, key
    assert run_fingerprint(hp, "llama3", Path("/b"), Path(__file__), None) != base


def test_auto_method_says_which_and_why():
    from ftpack.training.settings import TrainSettings, resolve_method

    assert resolve_method("auto", "cpu")[0] == "lora" and "CUDA" in resolve_method("auto", "cpu")[1]
    assert resolve_method("auto", "cuda")[0] == "qlora"
    assert resolve_method("SFT", "cpu") == ("sft", "as asked")
    with pytest.raises(FtpackError) as err:
        resolve_method("dpo", "cpu")
    assert err.value.code == 2
    on_gpu = TrainSettings(method="auto").resolved("cuda")
    assert (on_gpu.method, on_gpu.learning_rate, on_gpu.gradient_checkpointing) == ("qlora", 2e-4, True)
    on_cpu = TrainSettings(method="full", learning_rate=1e-5).resolved("cpu")
    assert (on_cpu.method, on_cpu.learning_rate, on_cpu.gradient_checkpointing) == ("full", 1e-5, False)


def test_qlora_output_shows_no_library_noise_unless_debug(tiny_llama, tmp_path):
    """Defect 12: bitsandbytes' "pip install kernels" note, transformers' progress bars and
    FutureWarnings stay hidden; --debug shows them. Fresh interpreters: bitsandbytes
    prints its note when first imported."""
    import os
    import subprocess
    import sys

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _conversations(8)), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "FTPACK_DEBUG"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])

    def run(*flags: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "ftpack", *flags, "train", "--base", str(tiny_llama),
                               "--data", str(data), "--method", "qlora", "--max-steps", "1",
                               "--out", str(tmp_path / f"out{len(flags)}")],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    quiet, debug = run(), run("--debug")
    assert "Loading weights" in debug  # the libraries did talk...
    for noise in ("kernels", "Loading weights", "Warning", "warnings.warn", "examples/s"):
        assert noise not in quiet, (noise, quiet)  # ...but only --debug shows it
    assert "Trained qlora for 1 steps" in quiet


def test_seed_decides_the_lora_initialisation(tiny_llama):
    """LoRA's A matrices start random, before the Trainer seeds anything: the run's seed
    must decide them, or the same settings train a different model each time (the demo's
    held-out score moved between identical runs)."""
    import torch

    from ftpack.training.settings import TrainSettings
    from ftpack.training.trainable import make_trainable

    def lora_a(seed: int) -> dict:
        settings = TrainSettings.from_config({"method": "lora", "seed": seed}).resolved("cpu")
        model = make_trainable(Path(tiny_llama), settings, device="cpu", bf16=False)
        return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}

    first, again, other = lora_a(7), lora_a(7), lora_a(8)
    assert first and first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert not any(torch.equal(first[n], other[n]) for n in first)
