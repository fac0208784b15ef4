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
    from ftpack.settings import build_config

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
    from ftpack.settings import build_config

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
    from ftpack.settings import build_config

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
    from ftpack.settings import build_config

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


# -- a config.json with a model_type but no architectures (issue 19, point 9) -------------------

def _without_architectures(src: Path, dest: Path, model_type: str | None = None) -> Path:
    """A copy of the model folder ``src`` whose config.json names no architectures (transformers'
    Auto classes load such a folder by its model_type)."""
    import shutil

    shutil.copytree(src, dest)
    config = json.loads((dest / "config.json").read_text(encoding="utf-8"))
    del config["architectures"]
    if model_type is not None:
        config["model_type"] = model_type
    (dest / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return dest


def test_a_config_without_architectures_is_the_class_transformers_builds_for_its_model_type():
    from ftpack.gguf.vendored import config_architecture, conversion_route

    assert config_architecture({"model_type": "llama"}) == "LlamaForCausalLM"
    assert config_architecture({"model_type": "phi3"}) == "Phi3ForCausalLM"
    assert config_architecture({"architectures": ["MistralForCausalLM"], "model_type": "llama"}) == "MistralForCausalLM"
    assert config_architecture({"model_type": "no_such_model"}) is None and config_architecture({}) is None
    support = ConverterSupport({"Phi3ForCausalLM": "phi3"}, frozenset({"llama", "phi3"}), "test llama.cpp")
    route, reason = conversion_route({"model_type": "llama"}, support)
    assert route == "own" and "LlamaForCausalLM" in reason and "'llama'" in reason
    route, reason = conversion_route({"model_type": "phi3"}, support)
    assert route == "vendored" and "Phi3ForCausalLM" in reason
    route, reason = conversion_route({"model_type": "no_such_model"}, support)
    assert route is None and "no architectures" in reason and "'no_such_model'" in reason


def test_a_base_without_architectures_passes_config_load_as_its_model_types_class(tiny_llama, tmp_path):
    """Loaded as transformers loads it: a llama model_type is LlamaForCausalLM (ftpack's own
    converter); a model_type transformers does not know stays a user error (exit 2), without torch."""
    import sys

    from ftpack.settings import build_config

    base = _without_architectures(tiny_llama, tmp_path / "llama-noarch")
    assert build_config("m", {"base": str(base)}).base == str(base)

    odd = _without_architectures(tiny_llama, tmp_path / "odd-noarch", model_type="no_such_model")
    with pytest.raises(FtpackError) as err:
        build_config("m", {"base": str(odd)})
    assert err.value.code == 2 and "'no_such_model'" in err.value.message and "architectures" in err.value.message
    assert "llama.cpp supports" in (err.value.hint or "")

    code = ("import sys\nfrom ftpack.settings import build_config\n"
            f"build_config('m', {{'base': {str(base)!r}}})\n"
            "print('HEAVY', 'torch' in sys.modules or 'transformers' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["HEAVY", "False"], proc.stdout + proc.stderr


def test_a_base_without_architectures_builds(tiny_llama, tmp_path, hello_data, run_cli):
    """`ftpack build` on it gets past the architecture check and through the data stage's
    vocab-only GGUF, training and ftpack's own converter: a llama GGUF."""
    base = _without_architectures(tiny_llama, tmp_path / "llama-noarch")
    out = tmp_path / "build"
    res = run_cli("--json", "build", "noarch", "--base", base, "--data", hello_data, "--out", out,
                  "--method", "lora", "--max-steps", "1", "--max-seq-length", "64", "--imatrix", "none",
                  "--no-register", "--no-verify")
    assert res.exit_code == 0, res.output
    stages = json.loads((out / "build.json").read_text(encoding="utf-8"))["stages"]
    for stage in ("data", "train", "convert", "quantize"):
        assert stages[stage]["status"] == "done", (stage, stages[stage])
    assert stages["convert"]["metrics"]["architecture"] == "llama"


def test_llama_cpps_converter_gets_the_architecture_of_a_config_that_names_none(tmp_path):
    """llama.cpp's convert_hf_to_gguf.py reads config.json's architectures alone: it runs on a
    folder of links whose config.json names the class, and the folder is gone afterwards."""
    from gguf import GGUFReader

    from ftpack.gguf.vendored import run_converter, vendored_source
    from tiny_archs import CASES, build_tiny_model

    base = _without_architectures(build_tiny_model(CASES["phi3"], tmp_path / "phi3"), tmp_path / "phi3-noarch")
    out = tmp_path / "gguf" / "vocab.gguf"
    out.parent.mkdir()
    run_converter(vendored_source(), base, out, "f16", ["--vocab-only"], what="vocabulary", model_name="noarch")
    field = GGUFReader(str(out)).fields["general.architecture"]
    assert bytes(field.parts[field.data[0]]).decode() == "phi3"
    assert sorted(p.name for p in out.parent.iterdir()) == ["vocab.gguf"]  # the linked folder is removed
    assert "architectures" not in json.loads((base / "config.json").read_text(encoding="utf-8"))
