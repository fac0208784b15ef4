"""Fixtures for the Ollama tests: the double on a random port, a tiny GGUF, the Go renderer.

Import the fixtures you use into a test module (``from ollama_double.fixtures import …``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from .server import OllamaDouble


def write_tiny_gguf(path: Path, *, arch: str = "llama", file_type: int = 15, kind: str | None = None,
                    chat_template: str | None = None, seed: int = 0) -> Path:
    """A small, valid GGUF (metadata + two tensors); not meant to run, only to be registered."""
    import numpy as np
    from gguf import GGUFWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    w = GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_file_type(file_type)
    if kind is not None:
        w.add_type(kind)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    rng = np.random.default_rng(seed)
    w.add_tensor("token_embd.weight", rng.standard_normal((16, 8), dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    """A tiny llama-architecture GGUF that says it is Q4_K_M (file_type 15), 136 parameters.

    Tests must not modify it (a module-level fixture copy per importing module is fine).
    """
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.Q4_K_M.gguf")


@pytest.fixture(scope="session")
def go_renderer():
    """Ollama's template execution (Go text/template), built once per test process."""
    from gotemplate import shared_renderer

    return shared_renderer()


@pytest.fixture
def ollama_models_dir(tmp_path) -> Path:
    return tmp_path / "ollama-models"


@pytest.fixture
def ollama_double(ollama_models_dir, tmp_path, monkeypatch) -> Iterator[OllamaDouble]:
    """The double on 127.0.0.1:<random port>, its store in a temp dir; OLLAMA_HOST points at it.

    FTPACK_HOME (ftpack's index of registered models) is isolated too, so registering
    against the double never touches the user's index.
    """
    double = OllamaDouble(ollama_models_dir).start()
    monkeypatch.setenv("OLLAMA_HOST", double.url)
    monkeypatch.setenv("FTPACK_HOME", str(tmp_path / "ftpack-home"))
    try:
        yield double
    finally:
        double.stop()


@pytest.fixture
def ftpack_home(tmp_path, monkeypatch) -> Path:
    """ftpack's own user folder (index of registered models), isolated per test."""
    home = tmp_path / "ftpack-home"
    monkeypatch.setenv("FTPACK_HOME", str(home))
    return home
