"""Base-model resolution: local folders, GGUF files, the embedded SmolLM2, aliases, hub ids
(offline and unreachable hubs fail fast with the id in the message)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftpack.core.errors import FtpackError
from ftpack.training.bases import ALIASES, resolve_base

REPO = Path(__file__).resolve().parents[1]


def test_local_folder_is_used_in_place(tiny_llama):
    r = resolve_base(str(tiny_llama))
    assert r.path == Path(tiny_llama).resolve() and r.source == "local"


def _fake_folder(tmp_path: Path, files: dict[str, str], config: dict | None = None) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config or {"model_type": "llama"}), encoding="utf-8")
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_pickle_weights_need_allow_pickle(tmp_path):
    folder = _fake_folder(tmp_path, {"model.pt": "not really a pickle"})
    with pytest.raises(FtpackError) as err:
        resolve_base(str(folder))
    assert err.value.code == 2 and "--allow-pickle" in err.value.hint
    assert resolve_base(str(folder), allow_pickle=True).path == folder.resolve()


def test_bin_weights_need_no_allow_pickle(tiny_llama, tmp_path):
    """pytorch_model*.bin (what Vicuna v1.5 ships) is read with torch's safe loader and
    resolved to a safetensors copy in the cache; the original folder is untouched."""
    import shutil

    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "bin-model"
    folder.mkdir()
    for f in tiny_llama.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and "safetensors" not in f.name:
            shutil.copy2(f, folder / f.name)
    state = {}
    for shard in tiny_llama.glob("*.safetensors"):
        state.update(load_file(shard))
    torch.save(state, folder / "pytorch_model.bin")
    before = sorted(p.name for p in folder.iterdir())
    r = resolve_base(str(folder))
    assert r.path != folder.resolve() and sorted(p.name for p in r.path.glob("*.safetensors"))
    assert r.model_id == str(folder.resolve()) and r.source == "local"
    assert sorted(p.name for p in folder.iterdir()) == before
    assert resolve_base(str(folder), tokenizer_only=True).path == folder.resolve()  # no conversion for tokens


def test_hub_patterns_fetch_bin_only_when_the_repo_has_no_safetensors():
    from ftpack.training.bases import hub_file_patterns

    with_st = hub_file_patterns(has_safetensors=True)
    assert "*.safetensors" in with_st and not any(p.endswith(".bin") for p in with_st)
    bin_only = hub_file_patterns(has_safetensors=False)
    assert "pytorch_model*.bin" in bin_only and "*.safetensors" not in bin_only
    assert {"*.safetensors", "pytorch_model*.bin"} <= set(hub_file_patterns(has_safetensors=None))
    assert not any("safetensors" in p or p.endswith(".bin") for p in hub_file_patterns(tokenizer_only=True))


def test_folder_without_weights_or_config(tmp_path):
    with pytest.raises(FtpackError) as err:
        resolve_base(str(_fake_folder(tmp_path, {})))
    assert err.value.code == 2 and "no model weights" in err.value.message
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FtpackError) as err:
        resolve_base(str(empty))
    assert err.value.code == 2 and "config.json" in err.value.message


def test_remote_code_needs_trust_remote_code(tmp_path):
    folder = _fake_folder(tmp_path, {"model.safetensors": ""},
                          {"model_type": "acme-custom", "auto_map": {"AutoModelForCausalLM": "modeling.Acme"}})
    with pytest.raises(FtpackError) as err:
        resolve_base(str(folder))
    assert err.value.code == 2 and "--trust-remote-code" in err.value.hint
    assert resolve_base(str(folder), trust_remote_code=True).trust_remote_code is True


@pytest.mark.parametrize("base", ["no-such-model", "/no/such/folder", "./missing.gguf", "a/b/c", ""])
def test_unknown_base_is_bad_input_listing_aliases(base):
    with pytest.raises(FtpackError) as err:
        resolve_base(base)
    assert err.value.code == 2
    assert "vicuna-7b" in err.value.hint and "smollm2-135m" in err.value.hint


def test_non_gguf_file_is_rejected(tmp_path):
    f = tmp_path / "weights.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(FtpackError) as err:
        resolve_base(str(f))
    assert err.value.code == 2 and ".gguf" in err.value.message


@pytest.mark.parametrize("content", [bytes(range(64)), b"GGUF\x03\x00\x00\x00"], ids=["not-gguf", "truncated"])
def test_broken_gguf_is_bad_input(tmp_path, content):
    f = tmp_path / "broken.gguf"
    f.write_bytes(content)
    with pytest.raises(FtpackError) as err:
        resolve_base(str(f), cache_dir=tmp_path / "cache")
    assert err.value.code == 2 and "broken.gguf" in err.value.message
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]  # nothing half-written


#: The chat format of each alias's model, as its model card documents it.
ALIAS_FORMATS = {
    "smollm2-135m": "chatml", "smollm2-360m": "chatml", "smollm2-1.7b": "chatml",
    "qwen2.5-0.5b-instruct": "chatml", "qwen2.5-1.5b-instruct": "chatml", "qwen2.5-7b-instruct": "chatml",
    "llama-3.2-1b-instruct": "llama3", "llama-3.2-3b-instruct": "llama3", "llama-3.1-8b-instruct": "llama3",
    "llama-2-7b-chat": "llama2", "mistral-7b-instruct": "mistral", "tinyllama-chat": "zephyr",
    "zephyr-7b-beta": "zephyr", "phi-3-mini": "phi3", "gemma-2-2b-it": "gemma",
    "vicuna-7b": "vicuna_v1.1", "vicuna-13b": "vicuna_v1.1",
}


def test_each_alias_finds_its_chat_format_through_the_one_map():
    """Aliases name hub ids only; templates/*.toml `aliases` patterns give the format, for
    the alias and for its hub id typed out in full alike."""
    from ftpack.training.templates import template_for_name

    assert ALIASES["vicuna-7b"] == "lmsys/vicuna-7b-v1.5"
    assert set(ALIASES) == set(ALIAS_FORMATS)
    for alias, hub_id in ALIASES.items():
        assert template_for_name(hub_id) == ALIAS_FORMATS[alias], alias
        assert template_for_name(alias) == ALIAS_FORMATS[alias], alias


def test_a_local_copy_keeps_the_name_it_was_saved_from(tmp_path):
    """A folder saved from lmsys/vicuna-7b-v1.5 (config.json's _name_or_path) is still
    recognised by that name when its tokenizer carries no chat template."""
    from ftpack.training.templates import choose_template

    folder = _fake_folder(tmp_path, {"model.safetensors": ""},
                          {"model_type": "llama", "_name_or_path": "lmsys/vicuna-7b-v1.5"})
    resolved = resolve_base(str(folder))
    assert resolved.names == (str(folder.resolve()), "lmsys/vicuna-7b-v1.5")
    assert choose_template(None, resolved.names).name == "vicuna_v1.1"


def test_tokenizer_only_resolution_needs_no_weights(tmp_path):
    folder = _fake_folder(tmp_path, {"tokenizer.json": "{}"})
    with pytest.raises(FtpackError):
        resolve_base(str(folder))  # training needs weights
    assert resolve_base(str(folder), tokenizer_only=True).path == folder.resolve()


# -- the hub, in a fresh interpreter (huggingface_hub reads HF_HOME / offline at import) ----

_RESOLVE = """
import json, sys, time
from ftpack.core.errors import FtpackError
from ftpack.training.bases import resolve_base
t = time.monotonic()
try:
    r = resolve_base(sys.argv[1])
    out = {"path": str(r.path), "source": r.source, "model_id": r.model_id}
except FtpackError as e:
    out = {"error": e.message, "hint": e.hint, "code": e.code}
out["seconds"] = time.monotonic() - t
print(json.dumps(out))
"""


def _resolve_in_subprocess(base: str, **env: str) -> dict:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    proc = subprocess.run([sys.executable, "-c", _RESOLVE, base], env=full_env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_offline_hub_names_the_id(tmp_path):
    out = _resolve_in_subprocess("vicuna-7b", HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    assert "lmsys/vicuna-7b-v1.5" in out["error"] and "offline" in out["error"]
    assert str(tmp_path / "hf") in out["hint"]  # says where the cache is (HF_HOME)
    assert out["seconds"] < 10


def test_unreachable_hub_fails_fast_naming_the_id(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = _resolve_in_subprocess("Qwen/Qwen2.5-0.5B-Instruct", HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="0",
                                 TRANSFORMERS_OFFLINE="0", HF_ENDPOINT=f"http://127.0.0.1:{port}")
    assert "Qwen/Qwen2.5-0.5B-Instruct" in out["error"] and "unreachable" in out["error"]
    assert out["seconds"] < 30


def test_hub_id_served_from_the_hf_cache_offline(tiny_llama, tmp_path):
    """A model already in HF_HOME's cache resolves with the hub offline (no network)."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--acme--tiny-chat"
    shutil.copytree(tiny_llama, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    out = _resolve_in_subprocess("acme/tiny-chat", HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    assert "error" not in out, out
    assert out["source"] == "hub" and Path(out["path"]) == repo / "snapshots" / revision


# -- GGUF and the embedded SmolLM2 --------------------------------------------------------

@pytest.mark.slow
def test_embedded_smollm2_is_a_clean_safetensors_model(smollm2_base):
    from ftpack.core.atomic import sha256_file
    from ftpack.training.bases import embedded_gguf_path

    config = json.loads((smollm2_base / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (smollm2_base / "model.safetensors").is_file()
    mark = json.loads((smollm2_base / "ftpack-source.json").read_text())
    assert mark["sha256"] == sha256_file(embedded_gguf_path())
    before = (smollm2_base / "model.safetensors").stat().st_mtime_ns
    again = resolve_base("smollm2-135m")  # cached: no second conversion
    assert again.path == smollm2_base and again.source == "embedded"
    assert again.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    by_file = resolve_base(str(embedded_gguf_path()))  # the same file given as a path: same cache entry
    assert by_file.path == smollm2_base and by_file.source == "gguf"
    assert (smollm2_base / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.slow
def test_embedded_smollm2_answers_like_the_original(smollm2_base):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smollm2_base))
    model = AutoModelForCausalLM.from_pretrained(str(smollm2_base), dtype=torch.float32)
    inputs = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
