"""`ftpack inspect`: GGUF metadata + tensor-type table, and build-dir manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def tiny_f16(tiny_llama, tmp_path_factory) -> Path:
    from ftpack.gguf.convert import convert_to_gguf

    out = tmp_path_factory.mktemp("inspect") / "tiny.f16.gguf"
    convert_to_gguf(tiny_llama, out, outtype="f16", name="inspect-me")
    return out


def json_result(output: str) -> dict:
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return next(e["data"] for e in events if e["event"] == "result")


def test_gguf_summary_json(tiny_f16, tiny_llama, run_cli):
    from gguf import GGUFReader

    res = run_cli("inspect", tiny_f16, "--json")
    assert res.exit_code == 0, res.output
    data = json_result(res.output)
    assert data["architecture"] == "llama" and data["name"] == "inspect-me"
    assert data["file_type"] == "F16" and data["context_length"] == 512 and data["block_count"] == 2
    assert data["special_tokens"]["eos"] == {"id": 4, "text": "<|im_end|>"}
    assert data["chat_template"] == (tiny_llama / "chat_template.jinja").read_text()
    reader = GGUFReader(tiny_f16)
    table = {r["type"]: r for r in data["tensor_types"]}
    assert sum(r["tensors"] for r in table.values()) == len(reader.tensors) == data["tensors"]
    assert sum(r["bytes"] for r in table.values()) == sum(int(t.n_bytes) for t in reader.tensors)
    assert table["F32"]["tensors"] == 5  # 2 layers x 2 norms + output norm
    assert data["parameters"] == sum(int(t.n_elements) for t in reader.tensors)


def test_gguf_summary_rich(tiny_f16, run_cli):
    res = run_cli("inspect", tiny_f16)
    assert res.exit_code == 0, res.output
    for word in ("llama", "F16", "Tensor types", "<|im_end|>", "context length"):
        assert word in res.output


def test_build_dir_manifest(tmp_path, run_cli):
    from ftpack.core.manifest import Manifest, OutputRecord, StageRecord

    build = tmp_path / "builds" / "demo"
    build.mkdir(parents=True)
    m = Manifest.load(build)
    m.name = "demo"
    m.stages["convert"] = StageRecord(status="done", seconds=1.5, main_output="gguf/demo.f16.gguf",
                                      outputs=[OutputRecord("gguf/demo.f16.gguf", 1234, "0" * 64, 0)],
                                      metrics={"outtype": "f16"})
    m.stages["quantize"] = StageRecord(status="failed", error="boom")
    m.save()
    res = run_cli("inspect", build, "--json")
    assert res.exit_code == 0, res.output
    data = json_result(res.output)
    assert data["name"] == "demo"
    assert data["stages"]["convert"]["bytes"] == 1234 and data["stages"]["convert"]["metrics"] == {"outtype": "f16"}
    assert data["stages"]["quantize"]["status"] == "failed"
    res = run_cli("inspect", build)
    assert "convert" in res.output and "1/2 stages done" in res.output


def test_wrong_paths_are_clear_errors(tmp_path, tiny_f16, run_cli):
    (tmp_path / "x.gguf").write_text("not a model")
    for path, words in ((tmp_path / "x.gguf", "not a GGUF"), (tmp_path / "missing.gguf", "not found"),
                        (tmp_path, "not a build dir")):
        res = run_cli("inspect", path)
        assert res.exit_code == 2 and words in res.output and "Traceback" not in res.output
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_f16.read_bytes()[:-1000])
    res = run_cli("inspect", cut)
    assert res.exit_code == 2 and "truncated" in res.output


def test_file_type_names_come_from_gguf_py():
    """general.file_type names are gguf-py's LlamaFileType (no hand-kept list), and agree
    with the names `ftpack quantize --list-types` offers from llama-cpp-python."""
    from gguf import LlamaFileType

    from ftpack.gguf.inspect import file_type_name, file_type_names
    from ftpack.gguf.quantize import quant_types

    names = file_type_names()
    assert (names[0], names[1], names[7], names[15], names[32]) == ("F32", "F16", "Q8_0", "Q4_K_M", "BF16")
    assert len(names) == len([t for t in LlamaFileType if t.name != "GUESSED"])
    assert all(names[i] == name for name, i in quant_types().items() if i in names)
    assert file_type_name(99999) == 99999 and file_type_name(None) is None
