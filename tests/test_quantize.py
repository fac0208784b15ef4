"""llama.cpp's quantizer through ftpack: real K-quants, every type by name, clear errors."""

from __future__ import annotations

import math
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

import llama_cpp

PPL_TEXT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named "
    "after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889. "
    "Locally nicknamed the Iron Lady, it was constructed as the centrepiece of the 1889 World's Fair, and "
    "to crown the centennial anniversary of the French Revolution. Although initially criticised by some "
    "of France's leading artists and intellectuals for its design, it has since become a global cultural "
    "icon of France and one of the most recognisable structures in the world. The tower received more "
    "than five million visitors in 2022. It is the most visited monument with an entrance fee in the world."
)


@pytest.fixture(scope="module")
def tiny_f16(tiny_llama, tmp_path_factory) -> Path:
    from ftpack.gguf.convert import convert_to_gguf

    out = tmp_path_factory.mktemp("q") / "tiny.f16.gguf"
    convert_to_gguf(tiny_llama, out, outtype="f16")
    return out


def tensor_types(path: Path) -> dict[str, str]:
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(path).tensors}


def test_q4_k_m_is_real(tiny_f16, tmp_path, run_cli):
    from ftpack.gguf.inspect import summarize_gguf

    out = tmp_path / "tiny.Q4_K_M.gguf"
    res = run_cli("quantize", tiny_f16, "-o", out, "--threads", "2")
    assert res.exit_code == 0, res.output
    s = summarize_gguf(out)
    assert s["file_type_id"] == 15 and s["file_type"] == "Q4_K_M"
    types = set(tensor_types(out).values())
    assert {"Q4_K", "Q6_K"} <= types
    assert s["chat_template"] == summarize_gguf(tiny_f16)["chat_template"]  # metadata survives
    assert out.stat().st_size < tiny_f16.stat().st_size / 2
    assert not list(tmp_path.glob("*.partial*"))


def test_every_llama_cpp_type_is_offered_case_insensitively(tiny_f16, tmp_path, run_cli):
    from ftpack.gguf.quantize import quant_types, resolve_quant_type

    types = quant_types()
    assert {"Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "IQ4_XS", "IQ2_XXS", "F16", "BF16"} <= set(types)
    assert all(types[n] == getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{n}") for n in types if n != "F32")
    assert resolve_quant_type("q5_k_m") == ("Q5_K_M", llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M)
    res = run_cli("quantize", tiny_f16, "-o", tmp_path / "a.gguf", "--type", "q8_0")
    assert res.exit_code == 0, res.output
    assert set(tensor_types(tmp_path / "a.gguf").values()) == {"Q8_0", "F32"}
    res = run_cli("quantize", tiny_f16, "-o", tmp_path / "b.gguf", "--type", "Q4_K_Z")
    assert res.exit_code == 2 and "Unknown quantization type" in res.output
    assert "Q4_K_M" in res.output and "IQ4_XS" in res.output and "Traceback" not in res.output


def test_requantizing_warns(tiny_f16, tmp_path, run_cli):
    q4 = tmp_path / "q4.gguf"
    assert run_cli("quantize", tiny_f16, "-o", q4).exit_code == 0
    res = run_cli("quantize", q4, "-o", tmp_path / "q8.gguf", "--type", "Q8_0")
    assert res.exit_code == 0, res.output
    assert "already quantized" in res.output
    fresh = run_cli("quantize", tiny_f16, "-o", tmp_path / "q8b.gguf", "--type", "Q8_0")
    assert "already quantized" not in fresh.output


def test_wrong_inputs_are_clear_errors(tiny_f16, tmp_path, run_cli):
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello")
    res = run_cli("quantize", not_gguf, "-o", tmp_path / "o.gguf")
    assert res.exit_code == 2 and "not a GGUF file" in res.output and "Traceback" not in res.output
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(tiny_f16.read_bytes()[: tiny_f16.stat().st_size // 2])
    res = run_cli("quantize", truncated, "-o", tmp_path / "o.gguf")
    assert res.exit_code == 2 and "truncated" in res.output and "Traceback" not in res.output
    res = run_cli("quantize", tiny_f16, "-o", tmp_path / "o.gguf", "--type", "IQ2_XS")
    assert res.exit_code == 2 and "importance matrix" in res.output
    assert not (tmp_path / "o.gguf").exists()


def test_native_crash_becomes_a_clear_error(tiny_f16, tmp_path, run_cli, monkeypatch):
    """A child that dies from a signal (as a segfault in native code would) is reported, not fatal."""
    shim = tmp_path / "crashing-python"
    shim.write_text("#!/bin/sh\nkill -SEGV $$\n")
    shim.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(shim))
    res = run_cli("quantize", tiny_f16, "-o", tmp_path / "o.gguf")
    assert res.exit_code == 1
    assert "crashed (SIGSEGV)" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o.gguf").exists() and not list(tmp_path.glob("o.gguf.partial*"))


def write_legacy_imatrix(path: Path, gguf_path: Path, seed: int = 0, trailer: tuple[int, str] | None = None) -> int:
    """An importance matrix in llama.cpp's legacy binary format, one entry per 2-D weight;
    ``trailer`` = (chunks, dataset) as llama-imatrix appends. Returns the entry count."""
    from gguf import GGUFReader

    rng = np.random.default_rng(seed)
    entries = [(t.name, int(t.shape[0])) for t in GGUFReader(gguf_path).tensors if len(t.shape) == 2]
    with open(path, "wb") as fh:
        fh.write(struct.pack("<i", len(entries)))
        for name, ncols in entries:
            fh.write(struct.pack("<i", len(name)) + name.encode())
            fh.write(struct.pack("<ii", 1, ncols))
            fh.write((rng.random(ncols, dtype=np.float32) ** 4 * 100).astype(np.float32).tobytes())
        if trailer is not None:
            fh.write(struct.pack("<ii", trailer[0], len(trailer[1].encode())) + trailer[1].encode())
    return len(entries)


def test_imatrix_is_used(tiny_f16, tmp_path, run_cli):
    imatrix = tmp_path / "imatrix.dat"
    write_legacy_imatrix(imatrix, tiny_f16)
    plain, weighted = tmp_path / "plain.gguf", tmp_path / "weighted.gguf"
    assert run_cli("quantize", tiny_f16, "-o", plain, "--type", "IQ4_XS").exit_code == 0
    res = run_cli("quantize", tiny_f16, "-o", weighted, "--type", "IQ4_XS", "--imatrix", imatrix)
    assert res.exit_code == 0, res.output
    assert plain.read_bytes() != weighted.read_bytes()  # the importance weights changed the rounding
    res = run_cli("quantize", tiny_f16, "-o", tmp_path / "iq2.gguf", "--type", "iq2_xs", "--imatrix", imatrix)
    assert res.exit_code == 0, res.output
    assert "IQ2_XS" in set(tensor_types(tmp_path / "iq2.gguf").values())
    bad = tmp_path / "bad.dat"
    bad.write_bytes(b"\x00\x00\x00\x00")
    res = run_cli("quantize", tiny_f16, "-o", tmp_path / "x.gguf", "--imatrix", bad)
    assert res.exit_code == 2 and "importance matrix" in res.output


def write_gguf_imatrix(path: Path, gguf_path: Path, chunks: int, datasets: list[str]) -> int:
    """An importance matrix in llama-imatrix's GGUF format (<name>.in_sum2 / <name>.counts)."""
    from gguf import GGUFReader, GGUFWriter

    rng = np.random.default_rng(1)
    writer = GGUFWriter(str(path), arch="imatrix")
    writer.add_array("imatrix.datasets", datasets)
    writer.add_uint32("imatrix.chunk_count", chunks)
    writer.add_uint32("imatrix.chunk_size", 512)
    names = [(t.name, int(t.shape[0])) for t in GGUFReader(gguf_path).tensors if len(t.shape) == 2]
    for name, ncols in names:
        writer.add_tensor(name + ".in_sum2", (rng.random((1, ncols), dtype=np.float32) * 50).astype(np.float32))
        writer.add_tensor(name + ".counts", np.array([[float(chunks * 512)]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return len(names)


@pytest.mark.parametrize("fmt", ["legacy", "gguf"])
def test_imatrix_provenance_is_recorded(fmt, tiny_f16, tmp_path, run_cli):
    """The quantized file names its importance matrix like llama-quantize does
    (quantize.imatrix.file/.dataset/.entries_count/.chunks_count)."""
    from gguf import GGUFReader

    from ftpack.gguf.inspect import field_value

    imatrix = tmp_path / f"imatrix.{'dat' if fmt == 'legacy' else 'gguf'}"
    if fmt == "legacy":
        n = write_legacy_imatrix(imatrix, tiny_f16, trailer=(37, "calibration-ü.txt"))
        datasets = ["calibration-ü.txt"]
    else:
        datasets = ["wiki.train.raw", "chat.txt"]
        n = write_gguf_imatrix(imatrix, tiny_f16, 12, datasets)
    out = tmp_path / "q.gguf"
    res = run_cli("quantize", tiny_f16, "-o", out, "--type", "Q4_K_M", "--imatrix", imatrix)
    assert res.exit_code == 0, res.output
    reader = GGUFReader(out)
    assert field_value(reader, "quantize.imatrix.file") == str(imatrix)
    assert field_value(reader, "quantize.imatrix.dataset") == datasets[0]  # llama-quantize keeps the first
    assert field_value(reader, "quantize.imatrix.entries_count") == n
    assert field_value(reader, "quantize.imatrix.chunks_count") == (37 if fmt == "legacy" else 12)
    assert field_value(reader, "general.file_type") == 15
    # without an imatrix there is no such key
    plain = tmp_path / "plain.gguf"
    assert run_cli("quantize", tiny_f16, "-o", plain).exit_code == 0
    assert field_value(GGUFReader(plain), "quantize.imatrix.file") is None


def perplexity(path: Path, text: str) -> float:
    llm = llama_cpp.Llama(str(path), logits_all=True, verbose=False, n_ctx=512, n_threads=2)
    try:
        ids = llm.tokenize(text.encode(), add_bos=False)
        llm.reset()
        llm.eval(ids)
        logits = np.array(llm.scores[: len(ids)], dtype=np.float64)
    finally:
        llm.close()
    logits -= logits.max(-1, keepdims=True)
    logprobs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.mean([logprobs[i, ids[i + 1]] for i in range(len(ids) - 1)])
    return math.exp(nll)


@pytest.mark.slow
def test_smollm2_q4_k_m_perplexity_close_to_f16(smollm2_base, tmp_path):
    from ftpack.gguf.convert import convert_to_gguf
    from ftpack.gguf.quantize import quantize_gguf

    f16 = tmp_path / "smollm2.f16.gguf"
    convert_to_gguf(smollm2_base, f16, outtype="f16")
    q4 = quantize_gguf(f16, tmp_path / "smollm2.Q4_K_M.gguf", "Q4_K_M").path
    ppl_f16, ppl_q4 = perplexity(f16, PPL_TEXT), perplexity(q4, PPL_TEXT)
    ratio = ppl_q4 / ppl_f16
    print(f"SmolLM2-135M perplexity: F16 {ppl_f16:.3f}, Q4_K_M {ppl_q4:.3f} ({(ratio - 1) * 100:+.1f}%), "
          f"sizes {f16.stat().st_size / 1e6:.0f} MB -> {q4.stat().st_size / 1e6:.0f} MB")
    assert ppl_f16 < 30  # a real model on real text, not noise
    assert abs(ratio - 1) < 0.08


def test_quant_auto_command_keeps_one_file_and_prints_the_table(tiny_f16, tmp_path, run_cli):
    """`ftpack quantize --quant auto -o OUT`: candidates smallest first; the kept one becomes OUT,
    the others are deleted; --max-kld 0 keeps none within budget: the lowest KLD, with a warning."""
    import json

    from ftpack.gguf.quantize import AUTO_CANDIDATES

    out = tmp_path / "auto.gguf"
    res = run_cli("--json", "quantize", tiny_f16, "-o", out, "--quant", "auto", "--max-kld", "0")
    assert res.exit_code == 0, res.output
    result = next(e for e in map(json.loads, res.output.splitlines()) if e.get("event") == "result")["data"]
    table = result["candidates"]
    assert [row["quant"] for row in table] == list(AUTO_CANDIDATES)  # none within 0: all tried
    best = min(table, key=lambda row: row["mean_kld"])
    assert result["type"] == best["quant"] and out.stat().st_size == best["bytes"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auto.gguf"]
    assert "No candidate is within --max-kld 0" in res.output
    res = run_cli("--json", "quantize", tiny_f16, "-o", tmp_path / "loose.gguf", "--quant", "AUTO", "--max-kld", "10")
    table = next(e for e in map(json.loads, res.output.splitlines()) if e.get("event") == "result")["data"]["candidates"]
    assert [row["quant"] for row in table] == ["Q3_K_M"]  # the smallest is within a loose budget


def test_iq3_without_an_importance_matrix_is_refused(tiny_f16, tmp_path, run_cli):
    for flags in ([], ["--imatrix", "none"]):
        res = run_cli("quantize", tiny_f16, "-o", tmp_path / "iq3.gguf", "--type", "IQ3_M", *flags)
        assert res.exit_code == 2 and "importance matrix" in res.output and "ftpack imatrix" in res.output
    assert not (tmp_path / "iq3.gguf").exists()
