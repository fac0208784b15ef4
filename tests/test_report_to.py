"""`--report-to` (Hugging Face's TrainingArguments.report_to): transformers' integration names,
checked at config load (exit 2 before any heavy import), logs inside the build folder, and
no finished stage rerun for a logging choice."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from ftpack.core.errors import FtpackError


def test_the_values_are_transformers_own_integrations():
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    from ftpack.training.tracking import INTEGRATIONS, REPORT_TO_VALUES

    assert set(INTEGRATIONS) == set(INTEGRATION_TO_CALLBACK)
    assert REPORT_TO_VALUES[:2] == ("none", "all")


def test_flag_and_config_key_forms(tmp_path):
    from ftpack.core.config import config_to_dict, load_config_file
    from ftpack.settings import build_config
    from ftpack.training.settings import TrainSettings
    from ftpack.training.tracking import trainer_report_to

    assert build_config("m").report_to is None  # default: none
    assert TrainSettings.from_config(build_config("m")).report_to is None
    for flags in (["tensorboard"], ["TensorBoard,tensorboard"], ["tensorboard", "tensorboard"]):
        assert build_config("m", flag_values={"report_to": flags}).report_to == ("tensorboard",)
    for text in ('report_to = "tensorboard"\n', 'report_to = ["tensorboard"]\n',
                 '[train]\nreport_to = "tensorboard"\n'):
        (tmp_path / "c.toml").write_text(text)
        cfg = build_config("m", load_config_file(tmp_path / "c.toml"))
        assert cfg.report_to == ("tensorboard",)
        assert config_to_dict(cfg)["report_to"] == ["tensorboard"]  # what build.json records
        assert TrainSettings.from_config(config_to_dict(cfg)).report_to == ("tensorboard",)
    assert build_config("m", {"report_to": []}).report_to is None
    assert build_config("m", flag_values={"report_to": ["none"]}).report_to == ("none",)
    assert trainer_report_to(None) == trainer_report_to(("none",)) == "none"
    assert trainer_report_to(("all",)) == "all"
    assert trainer_report_to(("tensorboard",)) == ["tensorboard"]


@pytest.mark.parametrize("values, words", [
    (["tensorbord"], ["'tensorbord'", "tensorboard", "wandb", "trackio", "mlflow"]),
    (["none,tensorboard"], ["'none' cannot be combined"]),
    (["all", "tensorboard"], ["'all' cannot be combined"]),
    (["kubeflow"], ["KUBEFLOW_TRAINER_SERVER_URL"]),
])
def test_bad_values_are_exit_2(values, words, monkeypatch):
    from ftpack.settings import build_config

    monkeypatch.delenv("KUBEFLOW_TRAINER_SERVER_URL", raising=False)
    with pytest.raises(FtpackError) as err:
        build_config("m", flag_values={"report_to": values})
    assert err.value.code == 2
    text = err.value.message + " " + (err.value.hint or "")
    assert all(w in text for w in words), text
    assert "--report-to" in err.value.message  # names where the value came from


def test_a_missing_package_is_named_with_what_to_install(monkeypatch):
    """tensorboard is installed here: pretend it is not (find_spec is all the check uses)."""
    from ftpack.settings import build_config

    real = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name.split(".")[0] in ("tensorboard", "tensorboardX") else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(FtpackError) as err:
        build_config("m", {"report_to": ["tensorboard"]})
    assert err.value.code == 2 and "tensorboard" in err.value.message and "report_to (config file)" in err.value.message
    assert "pip install tensorboard" in err.value.hint


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
@pytest.mark.parametrize("command", ["build", "train"])
@pytest.mark.parametrize("value, words", [("wandb", ["pip install wandb"]),
                                          ("tensorbord", ["unknown integration", "tensorboard, trackio"])])
def test_refused_at_config_load_before_heavy_imports(command, value, words, tmp_path, cli_in_fresh_process):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    args = ["build", "m"] if command == "build" else ["train", "--out", str(tmp_path / "run")]
    status, heavy, output = cli_in_fresh_process(*args, "--data", str(data), "--report-to", value)
    assert status == 2, output
    assert not heavy, "torch or transformers was imported before the refusal"
    assert all(w in " ".join(output.split()) for w in words), output
    assert not (tmp_path / "run").exists() and not (tmp_path / "builds").exists()


def test_local_logs_go_into_the_training_folder_unless_the_library_is_told(tmp_path, monkeypatch):
    import os

    from ftpack.training.tracking import local_log_dirs, logging_env

    for var in ("TENSORBOARD_LOGGING_DIR", "WANDB_DIR", "TRACKIO_DIR"):
        monkeypatch.delenv(var, raising=False)
    dirs = local_log_dirs(("tensorboard", "wandb", "trackio"), tmp_path / "train")
    assert Path(dirs["TENSORBOARD_LOGGING_DIR"]).parent == tmp_path / "train" / "runs"
    assert dirs["WANDB_DIR"] == str(tmp_path / "train")  # wandb adds its own wandb/ folder
    assert dirs["TRACKIO_DIR"] == str(tmp_path / "train" / "trackio")
    assert local_log_dirs(None, tmp_path) == local_log_dirs(("none",), tmp_path) == {}
    assert local_log_dirs(("mlflow",), tmp_path) == {}  # its own default (MLFLOW_TRACKING_URI)

    monkeypatch.setenv("WANDB_DIR", "/somewhere/else")  # the user's choice stands
    assert "WANDB_DIR" not in local_log_dirs(("wandb",), tmp_path)
    with logging_env({"WANDB_DIR": "/not/this", "TRACKIO_DIR": str(tmp_path)}):
        assert os.environ["WANDB_DIR"] == "/somewhere/else" and os.environ["TRACKIO_DIR"] == str(tmp_path)
    assert "TRACKIO_DIR" not in os.environ  # restored


def test_report_to_is_no_stage_input_but_the_cards():
    """A logging choice reruns nothing but the model card (which shows the whole config)."""
    from ftpack.core.config import OPTION_BY_KEY, stage_slice
    from ftpack.pipeline import build_stages
    from ftpack.settings import build_config
    from ftpack.training.settings import BOOKKEEPING

    assert OPTION_BY_KEY["report_to"].stage == "" and "report_to" in BOOKKEEPING  # nor the resume fingerprint
    plain, logged = build_config("m"), build_config("m", flag_values={"report_to": ["tensorboard"]})
    for stage in build_stages():
        def keys(cfg):
            return stage.config_keys(cfg) if stage.config_keys else stage_slice(cfg, stage.name)
        assert (keys(plain) == keys(logged)) == (stage.name != "report"), stage.name


def test_build_writes_tensorboard_events_into_the_build_folder(tiny_llama, tmp_path, run_cli, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from test_build_e2e import write_hello_data

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    data = write_hello_data(tmp_path / "hello.jsonl")
    out = tmp_path / "build"
    args = ["--json", "build", "tb", "--base", str(tiny_llama), "--data", str(data), "--out", str(out),
            "--method", "lora", "--max-steps", "2", "--max-seq-length", "64", "--learning-rate", "5e-3",
            "--no-register", "--no-verify"]
    result = run_cli(*args, "--report-to", "tensorboard")
    assert result.exit_code == 0, result.output
    events = sorted((out / "train" / "runs").glob("*/events.out.tfevents.*"))
    # one run folder (the final evaluation, after training closed its writer, opens a second file there)
    assert len({p.parent for p in events}) == 1, sorted(p.relative_to(out) for p in out.rglob("*"))
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert {"train/loss", "train/learning_rate", "eval/loss"} <= set(acc.Tags()["scalars"])
    losses = acc.Scalars("train/loss")
    assert [s.step for s in losses] == [1, 2] and all(s.value > 0 for s in losses)
    csv_losses = [float(r.split(",")[2]) for r in (out / "train" / "loss.csv").read_text().splitlines()[1:3]]
    assert [s.value for s in losses] == pytest.approx(csv_losses, rel=1e-5)  # the same numbers as loss.csv
    assert "TENSORBOARD_LOGGING_DIR" in " ".join(result.output.split())  # says where the logs went
    manifest = json.loads((out / "build.json").read_text())
    assert manifest["config"]["report_to"] == ["tensorboard"]

    again = run_cli(*args)  # the same build without --report-to: nothing retrained
    assert again.exit_code == 0, again.output
    statuses = {e["stage"]: e["status"] for e in map(json.loads, filter(None, again.stdout.splitlines()))
                if e.get("event") == "stage_end"}
    assert statuses["train"] == "skipped" and statuses["data"] == "skipped" and statuses["report"] == "done"
    assert json.loads((out / "build.json").read_text())["config"]["report_to"] is None
    assert sorted((out / "train" / "runs").glob("*/events.out.tfevents.*")) == events
