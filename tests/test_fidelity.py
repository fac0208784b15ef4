"""Quantization fidelity as the build reports it, measured by llama.cpp."""

from __future__ import annotations

import pytest

from ftpack.inference.fidelity import FIXED_TEXT, measure_fidelity


@pytest.fixture(scope="module")
def tiny_ggufs(tiny_llama, tmp_path_factory):
    from click.testing import CliRunner

    from ftpack.cli import cli

    d = tmp_path_factory.mktemp("fid")
    f16, q4 = d / "tiny.f16.gguf", d / "tiny.Q4_K_M.gguf"
    runner = CliRunner()
    assert runner.invoke(cli, ["-q", "convert", str(tiny_llama), "-o", str(f16)]).exit_code == 0
    assert runner.invoke(cli, ["-q", "quantize", str(f16), "-o", str(q4)]).exit_code == 0
    return f16, q4


def test_same_model_is_perfectly_faithful(tiny_ggufs):
    f16, _ = tiny_ggufs
    fid = measure_fidelity(f16, f16, [FIXED_TEXT])
    assert fid["tokens"] > 50
    assert fid["perplexity_ratio"] == 1.0 and fid["top1_agreement"] == 1.0


def test_quantized_model_differs_measurably(tiny_ggufs):
    f16, q4 = tiny_ggufs
    fid = measure_fidelity(f16, q4, [FIXED_TEXT, FIXED_TEXT.upper()], n_ctx=64)
    # A random-weight model loses top-1 agreement under 4-bit quantization (FACTS.md: ~61%).
    assert 0.2 < fid["top1_agreement"] < 1.0
    assert fid["perplexity_quantized"] != fid["perplexity_reference"]
    assert fid["tokens"] > 64  # several context windows were scored
