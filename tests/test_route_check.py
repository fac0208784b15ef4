"""Decide before training (issue 11): every kind of base has its architecture checked at config load.

* ``--base file.gguf``: the header's general.architecture must be one transformers dequantizes
  (ftpack trains on that copy) into an architecture a converter turns back into a GGUF;
  otherwise ``ftpack build`` exits 2 before any build folder exists and without importing torch.
* ``--base ollama:NAME``: the same check on the model's blob in the local Ollama store; a model
  not in the store yet (to be pulled) defers the check to the data stage, saying so.
* a hub id (or alias) not downloaded yet: only its config.json is fetched and checked; with the
  hub unreachable the check is deferred to the data stage, saying so — and there llama.cpp's
  converter is never started on an architecture it does not register (a user error naming it).

Tests write tiny GGUFs with gguf-py (metadata and two tensors) and fake Ollama stores and hubs:
nothing here touches the network.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftpack.core.errors import FtpackError
from ftpack.gguf.vendored import ConverterSupport, gguf_base_route
from ollama_double.fixtures import write_tiny_gguf
from test_ollama_base import put_model


@pytest.fixture
def hello_data(tmp_path) -> Path:
    path = tmp_path / "hello.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Say hello to {n}."},
                                                     {"role": "assistant", "content": f"Hello, {n}!"}]}) + "\n"
                            for n in ("Ada", "Kim", "Bo")))
    return path


@pytest.fixture
def events():
    """Reporter events (the --json stream) while a check runs in this process."""
    from ftpack.core.report import Reporter, get_reporter, set_reporter

    buf, previous = io.StringIO(), get_reporter()
    set_reporter(Reporter("json", out=buf))
    try:
        yield lambda: [json.loads(line) for line in buf.getvalue().splitlines()]
    finally:
        set_reporter(previous)


def _build_in_subprocess(tmp_path: Path, base: str, data: Path, env: dict[str, str] | None = None):
    """``ftpack build`` in a fresh Python: (its exit line 'EXIT code torch-imported', output, build folder)."""
    out = tmp_path / "build"
    code = ("import sys\nfrom ftpack.cli import cli\n"
            "try:\n"
            f"    cli(['build', 'odd', '--base', {base!r}, '--data', {str(data)!r}, '--out', {str(out)!r},"
            "         '--method', 'lora', '--no-register'], prog_name='ftpack')\n"
            "except SystemExit as exc:\n"
            "    print('EXIT', exc.code, 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=180,
                          env={**os.environ, **(env or {})})
    return proc.stdout, proc.stdout + proc.stderr, out


# -- --base file.gguf ---------------------------------------------------------------------------

def test_a_gguf_base_transformers_cannot_load_exits_2_at_config_load(tmp_path, hello_data):
    """A 'bert' GGUF: refused from its header in seconds — no torch, no build folder."""
    bert = write_tiny_gguf(tmp_path / "bert.gguf", arch="bert")
    stdout, output, out = _build_in_subprocess(tmp_path, str(bert), hello_data)
    assert "EXIT 2 False" in stdout, output
    assert "'bert'" in output and "transformers cannot load" in output, output
    assert not out.exists()


def test_a_gguf_base_is_checked_both_ways(tmp_path):
    """transformers must load it, and what it loads as must convert back: a llama GGUF passes via
    ftpack's own converter; a gemma2 GGUF passes only while llama.cpp's converter registers
    Gemma2ForCausalLM; an adapter GGUF is no base."""
    from ftpack.core.config import build_config

    llama = write_tiny_gguf(tmp_path / "llama.gguf", arch="llama")
    assert build_config("m", {"base": str(llama)}).base == str(llama)
    route, reason = gguf_base_route(llama)
    assert route == "own" and "LlamaForCausalLM" in reason

    gemma2 = write_tiny_gguf(tmp_path / "gemma2.gguf", arch="gemma2")
    runs = frozenset({"gemma2", "llama"})
    assert gguf_base_route(gemma2, ConverterSupport({"Gemma2ForCausalLM": "gemma2"}, runs, "test"))[0] == "vendored"
    route, reason = gguf_base_route(gemma2, ConverterSupport({"Phi3ForCausalLM": "phi3"}, runs, "test"))
    assert route is None
    assert "Gemma2ForCausalLM" in reason and "could not become a GGUF again" in reason

    adapter = write_tiny_gguf(tmp_path / "adapter.gguf", arch="llama", kind="adapter")
    with pytest.raises(FtpackError) as err:
        build_config("m", {"base": str(adapter)})
    assert err.value.code == 2 and "adapter" in err.value.message


# -- --base ollama:NAME -------------------------------------------------------------------------

def test_an_ollama_base_of_an_unsupported_architecture_exits_2_at_config_load(tmp_path, hello_data):
    store = tmp_path / "ollama-store"
    put_model(store, "embedder:latest", write_tiny_gguf(tmp_path / "bert.gguf", arch="bert"))
    stdout, output, out = _build_in_subprocess(tmp_path, "ollama:embedder", hello_data,
                                               {"OLLAMA_MODELS": str(store), "OLLAMA_HOST": "127.0.0.1:9"})
    assert "EXIT 2 False" in stdout, output
    assert "'bert'" in output and "ollama:embedder" in output, output
    assert not out.exists()


def test_an_ollama_base_not_pulled_yet_is_deferred(tmp_path, monkeypatch, events):
    """In the store: checked (a llama blob passes); not there: the check waits for the data stage."""
    from ftpack.core.config import build_config

    store = tmp_path / "ollama-store"
    put_model(store, "tiny:latest", write_tiny_gguf(tmp_path / "llama.gguf", arch="llama"))
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    assert build_config("m", {"base": "ollama:tiny"}).base == "ollama:tiny"
    assert not [e for e in events() if e.get("deferred")]
    assert build_config("m", {"base": "ollama:llama3.2"}).base == "ollama:llama3.2"
    notes = [e["message"] for e in events() if e.get("deferred")]
    assert len(notes) == 1 and "ollama:llama3.2" in notes[0] and "deferred to the data stage" in notes[0]


# -- hub ids ------------------------------------------------------------------------------------

def test_a_hub_id_with_the_hub_unreachable_passes_config_load_with_a_deferred_note(tmp_path, monkeypatch, events):
    from ftpack.core.config import build_config

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert build_config("m", {"base": "some-org/never-downloaded"}).base == "some-org/never-downloaded"
    notes = [e["message"] for e in events() if e.get("deferred")]
    assert len(notes) == 1 and "some-org/never-downloaded" in notes[0] and "HF_HUB_OFFLINE" in notes[0]


def test_a_hub_ids_config_json_alone_is_fetched_and_checked(tmp_path, monkeypatch):
    """Not in the cache, hub reachable: config.json (only) is downloaded, and an architecture
    no converter handles stops config load; a convertible one passes."""
    import huggingface_hub.constants

    from fake_hub import FakeHub
    from ftpack.core.config import build_config

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "config.json").write_text(json.dumps({"architectures": ["NoSuchModelForCausalLM"]}))
    (repo / "tokenizer.json").write_text("{}")
    (repo / "model.safetensors").write_bytes(b"\0" * 64)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with FakeHub("some-org/odd-model", repo) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(FtpackError) as err:
            build_config("m", {"base": "some-org/odd-model"})
        assert err.value.code == 2 and "NoSuchModelForCausalLM" in err.value.message
        assert hub.downloaded == ["config.json"]

        (repo / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub2"))
        assert build_config("m", {"base": "some-org/odd-model"}).base == "some-org/odd-model"


def test_the_converter_is_not_started_on_an_architecture_it_does_not_register(tmp_path):
    """What the data stage's vocab-only conversion meets for a deferred base: a user error naming
    the architecture, not the script's traceback."""
    from ftpack.gguf.vendored import run_converter, vendored_source

    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"architectures": ["NoSuchModelForCausalLM"], "model_type": "x"}))
    with pytest.raises(FtpackError) as err:
        run_converter(vendored_source(), odd, tmp_path / "vocab.gguf", "f16", ["--vocab-only"], what="vocabulary")
    assert err.value.code == 2 and "NoSuchModelForCausalLM" in err.value.message
    assert "failed (exit" not in err.value.message and "--llama-cpp" in (err.value.hint or "")
    assert not (tmp_path / "vocab.gguf").exists()
