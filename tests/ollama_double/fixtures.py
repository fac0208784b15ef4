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
    """The double of today's Ollama (0.34+) on 127.0.0.1:<random port>, its store in a temp
    dir; OLLAMA_HOST points at it.

    FTPACK_HOME (ftpack's index of registered models) is isolated too, so registering
    against the double never touches the user's index.
    """
    yield from _serve(ollama_models_dir, tmp_path, monkeypatch)


@pytest.fixture
def old_ollama_double(ollama_models_dir, tmp_path, monkeypatch) -> Iterator[OllamaDouble]:
    """The double of Ollama 0.34.0, the last release that still creates models with LoRA
    adapters (0.34.1 refuses them). For tests of ``--ship adapter`` on such servers."""
    yield from _serve(ollama_models_dir, tmp_path, monkeypatch, version="0.34.0")


def _serve(models_dir: Path, tmp_path: Path, monkeypatch, **kw) -> Iterator[OllamaDouble]:
    generator = llama_generator()
    double = OllamaDouble(models_dir, renderer=_render_with_go, generator=generator,
                          jinja_renderer=render_gguf_jinja, **kw).start()
    monkeypatch.setenv("OLLAMA_HOST", double.url)
    monkeypatch.setenv("FTPACK_HOME", str(tmp_path / "ftpack-home"))
    try:
        yield double
    finally:
        double.stop()
        generator.close()


def render_gguf_jinja(chat_template: str, messages: list[dict], think=None) -> str:
    """A GGUF's own Jinja template rendered for llama-server's /v1/chat/completions path:
    transformers' Jinja environment, ``enable_thinking`` when a ``think`` value is sent
    (llm/llama_server.go@00f6d62 chat_template_kwargs), and a leading BOS text left out
    (the runtime adds BOS from the GGUF)."""
    from ftpack.training.templates import render_chat

    extra = {} if think is None else {"enable_thinking": bool(think)}
    text = render_chat(chat_template, messages, add_generation_prompt=True, bos_token="<s>", eos_token="</s>",
                       **extra)
    return text[len("<s>"):] if text.startswith("<s>") else text


def _render_with_go(template: str, messages: list[dict]) -> str:
    """Ollama's prompt rendering (the Go renderer is built on the first /api/chat)."""
    from gotemplate import shared_renderer

    return shared_renderer().render(template, messages)


def llama_generator():
    """The double's /api/chat engine: llama.cpp on the stored GGUF, as Ollama's runner does.

    Options follow Ollama's names and defaults (num_ctx 2048... here 1024 to stay light,
    num_predict, temperature 0.8); models load on first use and are closed by ``close()``.
    """
    cache: dict = {}

    def generate(model_path, prompt, stop, options, adapter_path=None):
        from ftpack.inference.runtime import load_llama, stream_answer

        key = (model_path, adapter_path)  # an ADAPTER layer is applied as Ollama's runner does (--lora)
        if key not in cache:
            cache[key] = load_llama(model_path, n_ctx=int(options.get("num_ctx", 1024)), lora=adapter_path)
        # (text, finish reason): the double answers done_reason "length" when the limit was reached
        yield from stream_answer(cache[key], prompt, stop=stop, max_tokens=int(options.get("num_predict", 128)),
                                 temperature=float(options.get("temperature", 0.8)), options=options)

    def close() -> None:
        for model in cache.values():
            model.close()
        cache.clear()

    generate.close = close  # type: ignore[attr-defined]
    return generate


@pytest.fixture
def ftpack_home(tmp_path, monkeypatch) -> Path:
    """ftpack's own user folder (index of registered models), isolated per test."""
    home = tmp_path / "ftpack-home"
    monkeypatch.setenv("FTPACK_HOME", str(home))
    return home
