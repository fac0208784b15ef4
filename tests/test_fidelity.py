"""Quantization fidelity as the build reports it, measured by llama.cpp."""

from __future__ import annotations

from ftpack.inference.fidelity import FIXED_TEXT, measure_fidelity
from runnable_gguf import tiny_ggufs  # noqa: F401


def test_same_model_is_perfectly_faithful(tiny_ggufs):
    f16 = tiny_ggufs["f16"]
    fid = measure_fidelity(f16, f16, [FIXED_TEXT])
    assert fid["tokens"] > 50
    assert fid["perplexity_ratio"] == 1.0 and fid["top1_agreement"] == 1.0


def test_quantized_model_differs_measurably(tiny_ggufs):
    f16, q4 = tiny_ggufs["f16"], tiny_ggufs["Q4_K_M"]
    fid = measure_fidelity(f16, q4, [FIXED_TEXT, FIXED_TEXT.upper()], n_ctx=64)
    # A random-weight model loses top-1 agreement under 4-bit quantization (FACTS.md: ~61%).
    assert 0.2 < fid["top1_agreement"] < 1.0
    assert fid["perplexity_quantized"] != fid["perplexity_reference"]
    assert fid["tokens"] > 64  # several context windows were scored
