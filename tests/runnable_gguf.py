"""Runnable tiny GGUFs for llama.cpp tests: the tiny Llama converted (F16) and quantized.

(``ollama_double.fixtures.tiny_gguf`` is only metadata and two tensors: fine to register,
not to run.) Import the fixture into a test module: ``from runnable_gguf import tiny_ggufs``.
The model has random weights, so it never ends a turn on its own: tests that need an
answer to stop give it a stop string it emits early.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def convert_and_quantize(model_dir: Path, folder: Path, types: tuple[str, ...] = ("Q4_K_M", "Q2_K")) -> dict[str, Path]:
    """{"f16": ..., "<TYPE>": ...} written by ftpack's own `convert` and `quantize` commands."""
    from click.testing import CliRunner

    from ftpack.cli import cli

    runner = CliRunner()
    out = {"f16": folder / "tiny.f16.gguf"}
    res = runner.invoke(cli, ["-q", "convert", str(model_dir), "-o", str(out["f16"])])
    assert res.exit_code == 0, res.output
    for t in types:
        out[t] = folder / f"tiny.{t}.gguf"
        res = runner.invoke(cli, ["-q", "quantize", str(out["f16"]), "-o", str(out[t]), "--type", t])
        assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def tiny_ggufs(tiny_llama, tmp_path_factory) -> dict[str, Path]:
    """The tiny Llama as F16, Q4_K_M and Q2_K GGUFs (ChatML chat template in the metadata)."""
    return convert_and_quantize(tiny_llama, tmp_path_factory.mktemp("tiny-gguf"))
