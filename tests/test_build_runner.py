"""The stage runner: skip on rerun, rerun on change, --force, crash safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import runner_pipeline
from ftpack.core.errors import FtpackError
from ftpack.core.report import Reporter, set_reporter


@pytest.fixture(autouse=True)
def json_reporter(capsys):
    set_reporter(Reporter("json"))
    yield
    set_reporter(None)


def events(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def ran(evts):
    return [e["stage"] for e in evts if e["event"] == "stage_start"]


def skipped(evts):
    return [e["stage"] for e in evts if e["event"] == "stage_end" and e["status"] == "skipped"]


@pytest.fixture
def data_file(tmp_path):
    p = tmp_path / "qa.jsonl"
    p.write_text('{"q": "a"}\n{"q": "b"}\n', encoding="utf-8")
    return p


def test_first_run_records_every_stage(tmp_path, data_file, capsys):
    build = tmp_path / "b"
    m = runner_pipeline.run(build, data_file)
    assert ran(events(capsys)) == ["data", "train", "convert"]
    manifest = json.loads((build / "build.json").read_text())
    assert manifest["config"]["data"] == str(data_file)
    for name in ("data", "train", "convert"):
        rec = manifest["stages"][name]
        assert rec["status"] == "done"
        assert len(rec["input_hash"]) == 64
        assert rec["versions"]["ftpack"]
        assert rec["started"] and rec["ended"]
        for out in rec["outputs"]:
            f = build / out["path"]
            assert f.stat().st_size == out["bytes"]
    train_outputs = {o["path"] for o in manifest["stages"]["train"]["outputs"]}
    assert train_outputs == {"train/adapter/weights.txt", "train/adapter/config.json"}
    assert m.stages["convert"].main_output == "convert/tiny.f16.gguf"
    assert (build / "convert/tiny.f16.gguf").read_bytes().endswith(b"END")


def test_rerun_skips_everything(tmp_path, data_file, capsys):
    build = tmp_path / "b"
    runner_pipeline.run(build, data_file)
    before = (build / "convert/tiny.f16.gguf").stat().st_mtime_ns
    capsys.readouterr()
    runner_pipeline.run(build, data_file)
    evts = events(capsys)
    assert ran(evts) == []
    assert skipped(evts) == ["data", "train", "convert"]
    assert (build / "convert/tiny.f16.gguf").stat().st_mtime_ns == before


def test_relative_build_dir(tmp_path, data_file, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    m = runner_pipeline.run("builds/tiny", data_file)
    assert m.stages["convert"].main_output == "convert/tiny.f16.gguf"
    assert (tmp_path / "builds/tiny/convert/tiny.f16.gguf").is_file()
    capsys.readouterr()
    runner_pipeline.run("builds/tiny", data_file)
    assert skipped(events(capsys)) == ["data", "train", "convert"]


def test_changed_hyperparameter_reruns_only_dependents(tmp_path, data_file, capsys):
    build = tmp_path / "b"
    runner_pipeline.run(build, data_file)
    capsys.readouterr()
    runner_pipeline.run(build, data_file, learning_rate="0.5")
    evts = events(capsys)
    assert skipped(evts) == ["data"]
    assert ran(evts) == ["train", "convert"]
    assert "lr=0.5" in (build / "train/adapter/weights.txt").read_text()


def test_changed_input_file_reruns_from_data(tmp_path, data_file, capsys):
    build = tmp_path / "b"
    runner_pipeline.run(build, data_file)
    data_file.write_text('{"q": "changed"}\n', encoding="utf-8")
    capsys.readouterr()
    runner_pipeline.run(build, data_file)
    assert ran(events(capsys)) == ["data", "train", "convert"]
    assert "CHANGED" in (build / "convert/tiny.f16.gguf").read_text()


def test_tampered_output_is_redone(tmp_path, data_file, capsys):
    build = tmp_path / "b"
    runner_pipeline.run(build, data_file)
    (build / "train/adapter/config.json").write_text('{"r": 999}')
    capsys.readouterr()
    runner_pipeline.run(build, data_file)
    evts = events(capsys)
    assert "train" in ran(evts) and "data" in skipped(evts)
    assert json.loads((build / "train/adapter/config.json").read_text()) == {"r": 16}


def test_force_reruns_from_that_stage_on(tmp_path, data_file, capsys):
    build = tmp_path / "b"
    runner_pipeline.run(build, data_file)
    capsys.readouterr()
    runner_pipeline.run(build, data_file, force="train")
    evts = events(capsys)
    assert skipped(evts) == ["data"]
    assert ran(evts) == ["train", "convert"]


def test_force_unknown_stage_is_a_user_error(tmp_path, data_file):
    with pytest.raises(FtpackError) as exc:
        runner_pipeline.run(tmp_path / "b", data_file, force="tarin")
    assert exc.value.code == 2 and "tarin" in exc.value.message and "train" in exc.value.hint


def test_failed_stage_is_recorded_and_rerun(tmp_path, data_file, capsys, monkeypatch):
    build = tmp_path / "b"

    def boom(ctx):
        raise FtpackError("disk on fire", "put it out")

    stages = [runner_pipeline.STAGES[0], runner_pipeline.STAGES[1].__class__("train", "t", boom)]
    cfg = runner_pipeline.build_config("tiny", None, {"data": str(data_file)})
    with pytest.raises(FtpackError):
        runner_pipeline.run_stages(cfg, stages, build)
    manifest = json.loads((build / "build.json").read_text())
    assert manifest["stages"]["train"]["status"] == "failed"
    assert manifest["stages"]["train"]["error"] == "disk on fire"
    capsys.readouterr()
    runner_pipeline.run(build, data_file)
    evts = events(capsys)
    assert skipped(evts) == ["data"] and ran(evts) == ["train", "convert"]


def test_sigkill_mid_write_leaves_nothing_finished_and_rerun_completes(tmp_path, data_file, capsys):
    build = tmp_path / "b"
    script = Path(runner_pipeline.__file__)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(script.parent), str(script.parent.parent)])}
    proc = subprocess.Popen([sys.executable, str(script), str(build), str(data_file), "--stall"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:  # block until the convert stage is half-way through its write
        if line.strip() == "READY":
            break
    else:
        pytest.fail(f"pipeline ended early with {proc.wait()}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    final = build / "convert/tiny.f16.gguf"
    assert not final.exists()
    partials = list((build / "convert").glob("tiny.f16.gguf.partial-*"))
    assert len(partials) == 1 and partials[0].read_bytes().startswith(b"GGUF")
    manifest = json.loads((build / "build.json").read_text())
    assert manifest["stages"]["convert"]["status"] == "running"
    assert manifest["stages"]["train"]["status"] == "done"

    capsys.readouterr()
    runner_pipeline.run(build, data_file)
    evts = events(capsys)
    assert skipped(evts) == ["data", "train"] and ran(evts) == ["convert"]
    assert final.read_bytes().endswith(b"END")
    assert not list(build.rglob("*.partial-*"))


def test_second_concurrent_run_is_refused(tmp_path, data_file):
    from ftpack.core.runner import build_lock

    build = tmp_path / "b"
    with build_lock(build):
        with pytest.raises(FtpackError) as exc:
            runner_pipeline.run(build, data_file)
    assert "Another ftpack run" in exc.value.message


def test_damaged_manifest_is_a_clear_error(tmp_path, data_file):
    build = tmp_path / "b"
    build.mkdir()
    (build / "build.json").write_text("{not json")
    with pytest.raises(FtpackError) as exc:
        runner_pipeline.run(build, data_file)
    assert "damaged" in exc.value.message
