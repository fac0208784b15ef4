"""The build as a library call (`ftpack.pipeline.run_build`) and the `ftpack build` flags
that choose where the model goes: `register auto`, `--offline`, `--no-register`,
`--no-verify`, `--print-config`; verify gates registration; the final line says what
state the build is in.

One tiny-model build without registration is made once (through ``run_build``); each
test works on a copy of it, so only the stages its flags change run again.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
from pathlib import Path

import pytest

from ollama_double.fixtures import ollama_double, ollama_models_dir  # noqa: F401  (fixtures)
from test_build_e2e import write_hello_data

NAME = "tiny-pipe"
LATER = ["register", "roundtrip", "report"]


def _settings(base: Path, data: Path, out: Path) -> dict:
    return {"base": str(base), "data": str(data), "out": str(out), "method": "lora", "max_steps": 30,
            "learning_rate": 5e-3, "max_seq_length": 64, "per_device_train_batch_size": 4}


def _flags(base: Path, data: Path, out: Path) -> list[str]:
    return [arg for k, v in _settings(base, data, out).items() for arg in ("--" + k.replace("_", "-"), str(v))]


@pytest.fixture(scope="module")
def built(tiny_llama, tmp_path_factory):
    """(data file, build dir, manifest) of a finished build made with ``run_build``, not registered."""
    from ftpack.core.report import Reporter
    from ftpack.pipeline import run_build
    from ftpack.settings import build_config

    data = write_hello_data(tmp_path_factory.mktemp("data") / "hello.jsonl")
    out = tmp_path_factory.mktemp("built") / "build"
    cfg = build_config(NAME, None, {**_settings(tiny_llama, data, out), "register": "none"})
    manifest = run_build(cfg, reporter=Reporter("quiet", out=io.StringIO(), err=io.StringIO()))
    return data, out, manifest


@pytest.fixture
def build_copy(built, tmp_path) -> Path:
    out = tmp_path / "build"
    shutil.copytree(built[1], out)
    return out


def _events(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def _statuses(events: list[dict]) -> dict[str, str]:
    return {e["stage"]: e["status"] for e in events if e["event"] == "stage_end"}


def _final(events: list[dict]) -> dict:
    assert events[-1]["event"] == "final", events[-3:]
    return events[-1]


def _error(events: list[dict]) -> dict:
    return next(e for e in events if e["event"] == "error")


def _server_models(double) -> list[str]:
    import urllib.request

    with urllib.request.urlopen(f"{double.url}/api/tags") as resp:
        return [m["name"] for m in json.loads(resp.read())["models"]]


def _store_has(store: Path, name: str) -> bool:
    return any(p.parent.name == name for p in (store / "manifests").rglob("latest")) if store.is_dir() else False


def _dead_host() -> str:
    """A URL where nothing listens (a port just freed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# -- the library call -------------------------------------------------------------------------------

def test_run_build_returns_the_manifest_with_the_report_as_its_last_stage(built):
    from ftpack.pipeline import build_outcome

    _, out, manifest = built
    assert list(manifest.stages) == ["data", "train", "convert", "quantize", "verify", "modelfile", "report"]
    assert all(r.status == "done" for r in manifest.stages.values())
    assert manifest.config["method"] == "lora" and manifest.config["register"] == "none"
    report = manifest.stages["report"]
    assert report.main_output == "report.md" and [o.path for o in report.outputs] == ["report.md"]
    outcome = build_outcome(manifest)
    assert outcome.ok and outcome.state == "not_registered" and outcome.verified == "passed"
    assert outcome.registered is None and outcome.next_command == f"ftpack chat {out}"
    assert outcome.report == out / "report.md"
    assert "Not registered with Ollama (`--no-register`)" in (out / "report.md").read_text(encoding="utf-8")


def test_run_build_resolves_auto_choices_without_changing_the_callers_config(tiny_llama, tmp_path, monkeypatch):
    from ftpack.pipeline import resolve_config
    from ftpack.settings import build_config

    monkeypatch.setenv("OLLAMA_HOST", _dead_host())
    data = write_hello_data(tmp_path / "hello.jsonl")
    cfg = build_config(NAME, None, {"base": str(tiny_llama), "data": str(data)})
    resolved, why = resolve_config(cfg)
    assert (cfg.method, cfg.register) == ("auto", "auto")
    assert resolved.method in ("lora", "qlora") and resolved.register == "offline"
    assert "no Ollama server" in why["register"]


# -- where the model goes -----------------------------------------------------------------------------

def test_register_auto_registers_with_a_running_server(built, build_copy, tiny_llama, run_cli, ollama_double):
    data = built[0]
    result = run_cli("--json", "build", NAME, *_flags(tiny_llama, data, build_copy))  # register: auto (default)
    assert result.exit_code == 0, result.output
    events = _events(result.stdout)
    assert {"event": "info", "message": f"register: server (Ollama server {ollama_double.version} at "
                                        f"{ollama_double.url})"} in events
    st = _statuses(events)
    assert all(st[s] == "skipped" for s in ("data", "train", "convert", "quantize", "verify", "modelfile"))
    assert all(st[s] == "done" for s in LATER)
    assert any(m.startswith(NAME) for m in _server_models(ollama_double))
    final = _final(events)
    assert final["state"] == "ready" and final["roundtrip"] == "passed"
    assert final["message"] == (f"Done: verified (answers and stops), registered with the Ollama server at "
                                f"{ollama_double.url}, round trip passed. Try it: ollama run {NAME}")
    card = (build_copy / "report.md").read_text(encoding="utf-8")
    assert "Round trip through the Ollama server: passed" in card


def test_register_auto_without_a_server_writes_the_store(built, build_copy, tiny_llama, run_cli, monkeypatch):
    import os

    monkeypatch.setenv("OLLAMA_HOST", _dead_host())
    store = Path(os.environ["OLLAMA_MODELS"])
    result = run_cli("--json", "build", NAME, *_flags(tiny_llama, built[0], build_copy))
    assert result.exit_code == 0, result.output
    events = _events(result.stdout)
    assert any(e["event"] == "info" and e["message"].startswith("register: offline (no Ollama server")
               for e in events)
    assert all(_statuses(events)[s] == "done" for s in LATER)
    assert _store_has(store, NAME)
    final = _final(events)
    assert final["state"] == "ready" and final["roundtrip"] == "not run (offline)"
    assert f"in Ollama's model store {store.resolve()}" in final["message"]


def test_offline_writes_the_store_even_when_a_server_runs(built, build_copy, tiny_llama, run_cli, ollama_double):
    import os

    result = run_cli("--json", "build", NAME, *_flags(tiny_llama, built[0], build_copy), "--offline")
    assert result.exit_code == 0, result.output
    events = _events(result.stdout)
    assert {"event": "info", "message": "register: offline (as asked)"} in events
    assert _store_has(Path(os.environ["OLLAMA_MODELS"]), NAME)
    assert _server_models(ollama_double) == []  # the running server was not used
    assert _final(events)["roundtrip"] == "not run (offline)"


def test_no_register_leaves_ollama_alone(built, build_copy, tiny_llama, run_cli, ollama_double):
    result = run_cli("--json", "build", NAME, *_flags(tiny_llama, built[0], build_copy), "--no-register")
    assert result.exit_code == 0, result.output
    events = _events(result.stdout)
    assert not {"register", "roundtrip"} & set(_statuses(events))
    assert _server_models(ollama_double) == []
    final = _final(events)
    assert final["state"] == "not_registered"
    assert final["message"] == (f"Done: verified (answers and stops), not registered (--no-register). "
                                f"Try it: ftpack chat {build_copy}")


def test_print_config_shows_resolved_choices_and_builds_nothing(built, tiny_llama, tmp_path, run_cli,
                                                                ollama_double, monkeypatch):
    from ftpack.core.config import load_config_file
    from ftpack.pipeline import resolve_method

    out = tmp_path / "not-built"
    result = run_cli("build", NAME, *_flags(tiny_llama, built[0], out), "--method", "auto", "--print-config")
    assert result.exit_code == 0, result.output
    printed = tmp_path / "printed.toml"
    printed.write_text(result.stdout, encoding="utf-8")
    values = load_config_file(printed)  # what it prints loads back as a config file
    assert values["method"] == resolve_method("auto")[0] and values["register"] == "server"
    assert f"# Ollama server {ollama_double.version} at {ollama_double.url}" in result.stdout
    assert not out.exists()

    monkeypatch.setenv("OLLAMA_HOST", _dead_host())
    result = run_cli("--json", "build", NAME, *_flags(tiny_llama, built[0], out), "--print-config")
    config = next(e for e in _events(result.stdout) if e["event"] == "result")["data"]["config"]
    assert config["register"] == "offline"
    assert not out.exists()


def test_force_of_a_stage_this_build_does_not_run_is_refused(tiny_llama, tmp_path, run_cli):
    data = write_hello_data(tmp_path / "hello.jsonl")
    for flags in (["--no-register", "--force", "register"], ["--no-verify", "--force", "verify"]):
        result = run_cli("build", NAME, *_flags(tiny_llama, data, tmp_path / "b"), *flags)
        assert result.exit_code == 2, result.output
        assert "contradicts" in result.output
        assert not (tmp_path / "b").exists()


# -- verify gates registration --------------------------------------------------------------------------

def test_a_model_failing_verify_is_not_registered_unless_no_verify(built, build_copy, tiny_llama, run_cli,
                                                                  ollama_double):
    from ftpack.core.manifest import Manifest

    # Two tokens are too few for any answer to end: the local check fails, as for a model that babbles.
    args = ["--json", "build", NAME, *_flags(tiny_llama, built[0], build_copy), "--register", "server",
            "--max-answer-tokens", "2"]
    result = run_cli(*args)
    assert result.exit_code == 1, result.output
    events = _events(result.stdout)
    assert _statuses(events)["verify"] == "failed"
    assert not {"modelfile", "register", "roundtrip", "report"} & {s for s, v in _statuses(events).items()
                                                                  if v != "skipped"}
    error = _error(events)
    assert error["message"].startswith("Verify failed, so the model was NOT registered: ")
    assert "2" in error["message"] and "--no-verify" in error["hint"]
    outcome = next(e for e in events if e["event"] == "outcome")
    assert outcome["state"] == "verify_failed" and outcome["registered"] is None
    assert _server_models(ollama_double) == []
    manifest = Manifest.load(build_copy)
    assert manifest.stages["verify"].status == "failed" and "register" not in manifest.stages

    result = run_cli(*args, "--no-verify")
    assert result.exit_code == 0, result.output
    events = _events(result.stdout)
    assert "verify" not in _statuses(events)
    assert all(_statuses(events)[s] == "done" for s in LATER)
    assert any(m.startswith(NAME) for m in _server_models(ollama_double))
    final = _final(events)
    assert final["state"] == "not_verified" and final["verified"] == "skipped (--no-verify)"
    assert final["message"].startswith("Done: NOT verified (--no-verify), registered with the Ollama server")
    card = (build_copy / "report.md").read_text(encoding="utf-8")
    assert "**Not verified**" in card and "Skipped (`--no-verify`)" in card


def test_a_failed_round_trip_says_the_model_is_registered(built, build_copy, tiny_llama, run_cli, ollama_double):
    ollama_double.generator = lambda *args: iter(())  # the server answers every chat with an empty message
    result = run_cli("--json", "build", NAME, *_flags(tiny_llama, built[0], build_copy), "--register", "server")
    assert result.exit_code == 1, result.output
    events = _events(result.stdout)
    assert _statuses(events)["register"] == "done" and _statuses(events)["roundtrip"] == "failed"
    error = _error(events)
    assert error["message"].startswith(f"Registered {NAME} with the Ollama server at {ollama_double.url} "
                                       "(verified), but the round trip through the server failed: ")
    assert "empty message" in error["message"]
    assert any(m.startswith(NAME) for m in _server_models(ollama_double))


# -- held-out answers in the model card ----------------------------------------------------------------

def test_heldout_answers_are_in_the_model_card(built, build_copy, tiny_llama, run_cli, tmp_path):
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"question": f"Say hello to {n}.", "keywords": ["Hello"]}) + "\n"
                               for n in ("Yul", "Zoe", "Ari")), encoding="utf-8")
    result = run_cli("--json", "build", NAME, *_flags(tiny_llama, built[0], build_copy), "--no-register",
                     "--heldout", str(heldout))
    assert result.exit_code == 0, result.output
    st = _statuses(_events(result.stdout))
    assert st["report"] == "done" and all(v == "skipped" for s, v in st.items() if s != "report")

    from ftpack.core.manifest import Manifest

    h = Manifest.load(build_copy).stages["report"].metrics["heldout"]
    assert h["questions"] == 3 and h["base_correct"] is None
    assert h["tuned_correct"] >= 2  # it learned to greet
    card = (build_copy / "report.md").read_text(encoding="utf-8")
    assert "## Held-out questions" in card
    assert f"Fine-tuned: **{h['tuned_correct']}/3** right. Base: not asked (the base is a Hugging Face model" in card
    for a in h["answers"]:
        assert a["tuned"] and f"| {a['question']} | Hello | " in card


def test_a_heldout_file_without_questions_fails_before_any_stage(tiny_llama, tmp_path, run_cli):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    data = write_hello_data(tmp_path / "hello.jsonl")
    result = run_cli("build", NAME, *_flags(tiny_llama, data, tmp_path / "b"), "--heldout", str(empty))
    assert result.exit_code == 2 and "no held-out questions" in result.output
    assert not (tmp_path / "b").exists()
