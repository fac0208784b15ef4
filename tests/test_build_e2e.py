"""`ftpack build` end to end on the tiny Llama: every method, skip on rerun, kill and resume.

Registration goes to the in-repo Ollama double (tests/ollama_double), the same HTTP API
a real `ollama serve` answers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ollama_double.fixtures import ollama_double, ollama_models_dir  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parent.parent


NAMES = ("Ada Bo Cy Di Ed Flo Gus Hal Ivy Jo Kim Lu Max Ned Ola Pia Quin Rex Sue Tom Una Vic Wes Xia").split()


def write_hello_data(path: Path) -> Path:
    """24 short conversations: a random tiny model learns their shape (and to stop) in 30 steps.

    The verify stage fails a model that never stops, so the tiny model must really learn
    to end its answer with the template's end-of-turn token.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for n in NAMES:
            fh.write(json.dumps({"messages": [{"role": "user", "content": f"Say hello to {n}."},
                                              {"role": "assistant", "content": f"Hello, {n}!"}]}) + "\n")
    return path


@pytest.fixture(scope="module")
def qa_data(tmp_path_factory) -> Path:
    return write_hello_data(tmp_path_factory.mktemp("data") / "hello.jsonl")


def _build_args(name: str, base: Path, data: Path, out: Path, method: str, *extra: str) -> list[str]:
    return ["--json", "build", name, "--base", str(base), "--data", str(data), "--out", str(out),
            "--method", method, "--max-steps", "30", "--learning-rate", "5e-3", "--max-seq-length", "64",
            "--per-device-train-batch-size", "4", "--register", "server", *extra]


def _events(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def _statuses(events: list[dict]) -> dict[str, str]:
    return {e["stage"]: e["status"] for e in events if e["event"] == "stage_end"}


ALL_STAGES = ["data", "train", "convert", "quantize", "verify", "modelfile", "register", "roundtrip", "report"]


@pytest.mark.parametrize("method", ["lora", "qlora", "sft", "full"])
def test_build_each_method_then_rerun_skips(method, tiny_llama, qa_data, tmp_path, run_cli, ollama_double):
    from gguf import GGUFReader

    from ftpack.core.atomic import sha256_file
    from ftpack.ollama.modelfile import read_modelfile

    out = tmp_path / "build"
    name = f"tiny-{method}"
    result = run_cli(*_build_args(name, tiny_llama, qa_data, out, method))
    assert result.exit_code == 0, result.output
    events = _events(result.stdout)
    assert _statuses(events) == {s: "done" for s in ALL_STAGES}
    assert events[-1]["event"] == "final" and f"ollama run {name}" in events[-1]["message"]

    quantized = out / "gguf" / f"{name}.Q4_K_M.gguf"
    reader = GGUFReader(str(quantized))
    file_type = reader.fields["general.file_type"]
    assert int(file_type.parts[file_type.data[0]][0]) == 15
    types = {t.tensor_type.name for t in reader.tensors}
    assert "Q4_K" in types

    modelfile = out / "ollama" / "Modelfile"
    spec = read_modelfile(modelfile)  # parses back with Ollama's grammar
    assert (modelfile.parent / spec.from_path).resolve() == quantized.resolve()
    assert ("stop", "<|im_end|>") in spec.parameters

    manifest = json.loads((out / "build.json").read_text())
    assert manifest["config"]["method"] == method
    # the collated batches of every method: llama.cpp's ids, the loss on exactly the trained tokens
    train = manifest["stages"]["train"]["metrics"]
    assert train["batch_check_against"] == "llama.cpp (vocab.gguf)"
    assert train["batch_check_rows"] == manifest["stages"]["data"]["metrics"]["train_records"]
    assert 0 < train["batch_check_trained_tokens"] < train["batch_check_tokens"]
    # qlora's base was really held in 4 bits while training (every linear of the tiny Llama's 2 blocks)
    assert manifest["stages"]["train"]["metrics"]["base_4bit_layers"] == (14 if method == "qlora" else 0)
    assert all(manifest["stages"][s]["status"] == "done" for s in ALL_STAGES)
    # served as trained: the TEMPLATE path, and Ollama's answer (greedy) is verify's, ended by a stop
    assert manifest["stages"]["modelfile"]["metrics"]["prompt_path"] == "template"
    trip = manifest["stages"]["roundtrip"]["metrics"]
    assert trip["done_reason"] == "stop" and trip["ollama_answer"].strip()
    assert trip["ollama_answer"].strip() == manifest["stages"]["verify"]["metrics"]["answer"].strip()

    # The double holds the model, its weights blob being exactly the quantized GGUF.
    import urllib.request

    with urllib.request.urlopen(f"{ollama_double.url}/api/tags") as resp:
        tags = json.loads(resp.read())["models"]
    entry = next(m for m in tags if m["name"].startswith(name))
    manifests = ollama_double.store.root / "manifests"
    store_manifest = json.loads(next(manifests.rglob(name)).joinpath("latest").read_text())
    model_layer = next(l for l in store_manifest["layers"] if l["mediaType"] == "application/vnd.ollama.image.model")
    assert model_layer["digest"] == "sha256:" + sha256_file(quantized)
    assert entry["size"] >= quantized.stat().st_size

    check_model_card(out, qa_data)

    # A second identical run does nothing.
    again = run_cli(*_build_args(name, tiny_llama, qa_data, out, method))
    assert again.exit_code == 0, again.output
    assert _statuses(_events(again.stdout)) == {s: "skipped" for s in ALL_STAGES}
    assert _events(again.stdout)[-1]["message"] == events[-1]["message"]


def check_model_card(out: Path, data: Path) -> None:
    """report.md states each fact once: data stats, hyper-parameters, losses, full sha256s,
    fidelity, versions, all as build.json and the files on disk say."""
    import csv
    from importlib import metadata

    import ftpack
    from ftpack.core.atomic import sha256_file

    manifest = json.loads((out / "build.json").read_text())
    stages = manifest["stages"]
    card = (out / "report.md").read_text(encoding="utf-8")
    assert stages["report"]["main_output"] == "report.md"

    pairs = [[c.strip() for c in line.strip().strip("|").split("|")] for line in card.splitlines()
             if line.startswith("| ")]
    keys = [p[0] for p in pairs if len(p) == 2 and p[0]]
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)  # no duplicated rows

    def row(key: str, value: str) -> None:
        assert f"| {key} | {value} |" in card, (key, value)

    d = stages["data"]["metrics"]
    row("records", "24")
    row("split", f"{d['train_records']} train / {d['eval_records']} eval")
    row("tokens", str(d["tokens"]))
    row("sha256", f"`{sha256_file(data)}`")
    row("chat template", d["template"])

    row("lora_r", "16")
    row("max_steps", "30")
    row("learning_rate", "0.005")
    row("per_device_train_batch_size", "4")
    losses = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(open(out / "train" / "loss.csv"))
              if r["loss"]]
    low = min(losses, key=lambda p: p[1])
    row("train loss: first / last", f"{losses[0][1]:.6g} / {losses[-1][1]:.6g}")
    row("train loss: lowest", f"{low[1]:.6g} (step {low[0]})")
    row("optimizer steps", "30")
    assert "![training loss](train/loss.png)" in card and (out / "train" / "loss.png").is_file()

    v = stages["verify"]["metrics"]
    row("perplexity ratio", f"{v['perplexity_ratio']:.6g}")
    row("top-1 token agreement", f"{v['top1_agreement']:.1%}")
    row("answer", v["answer"].strip())

    quantized = next(out.glob("gguf/*.Q4_K_M.gguf"))
    for f in (quantized, next(out.glob("gguf/*.f16.gguf")), out / "ollama" / "Modelfile", out / "data" / "train.jsonl"):
        assert f"`{sha256_file(f)}`" in card, f  # the whole digest, not a prefix
    row("quantization type", "Q4_K_M")
    assert "## Modelfile" in card and "FROM " in card

    for lib in ("torch", "transformers", "peft", "llama-cpp-python", "gguf"):
        row(lib, metadata.version(lib))
    row("ftpack", ftpack.__version__)


def test_changed_hyperparameter_reruns_from_train(tiny_llama, qa_data, tmp_path, run_cli, ollama_double):
    out = tmp_path / "build"
    assert run_cli(*_build_args("tiny-hp", tiny_llama, qa_data, out, "lora")).exit_code == 0
    result = run_cli(*_build_args("tiny-hp", tiny_llama, qa_data, out, "lora", "--lora-r", "4"))
    assert result.exit_code == 0, result.output
    st = _statuses(_events(result.stdout))
    assert st["data"] == "skipped"
    assert all(st[s] == "done" for s in ALL_STAGES[1:])


def test_killed_during_training_resumes(tiny_llama, qa_data, tmp_path, ollama_double):
    out = tmp_path / "build"
    args = [sys.executable, "-m", "ftpack", *_build_args("tiny-kill", tiny_llama, qa_data, out, "lora")]
    args += ["--save-steps", "10"]
    env = {**os.environ, "OLLAMA_HOST": ollama_double.url}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                            cwd=REPO)
    killed_at = None
    for line in proc.stdout:  # wait until training is past its first checkpoint
        if not line.startswith("{"):
            continue
        e = json.loads(line)
        if e["event"] == "progress" and e.get("description", "").startswith("train") and e["completed"] >= 12:
            killed_at = e["completed"]
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert killed_at is not None, "training never reported progress"
    manifest = json.loads((out / "build.json").read_text())
    assert manifest["stages"]["data"]["status"] == "done"
    assert manifest["stages"]["train"]["status"] == "running"
    assert not (out / "gguf").exists() or not list((out / "gguf").glob("*.gguf"))

    rerun = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    st = _statuses(_events(rerun.stdout))
    assert st["data"] == "skipped"
    assert all(st[s] == "done" for s in ALL_STAGES[1:])
    manifest = json.loads((out / "build.json").read_text())
    train = manifest["stages"]["train"]["metrics"]
    assert train["steps"] == 30
    assert 10 <= train["resumed_from_step"] <= killed_at  # continued from the last checkpoint
    assert not list(out.rglob("*.partial-*"))
