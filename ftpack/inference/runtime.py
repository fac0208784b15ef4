"""The llama.cpp runtime: one way to load a GGUF, stream an answer and count tokens.

Verify, chat, fidelity and the held-out questions all run a GGUF through llama-cpp-python,
the same llama.cpp Ollama runs. Loading lives here once: llama.cpp's own log lines stay
quiet unless ``--debug``, a file llama.cpp cannot read becomes an :class:`FtpackError`,
and every model is closed explicitly (``Llama.__del__`` can raise at interpreter exit).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Sequence

from ftpack.core.errors import FtpackError

#: Ollama option names that llama-cpp-python's sampler takes under the same name.
SAMPLER_OPTIONS = ("top_k", "top_p", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty", "seed")


def load_llama(gguf: str | Path, *, n_ctx: int = 2048, threads: int | None = None, seed: int = 0,
               logits_all: bool = False, n_batch: int | None = None, vocab_only: bool = False,
               lora: str | Path | None = None):
    """A ``llama_cpp.Llama`` for ``gguf``; the caller closes it (or uses :func:`open_llama`).

    ``threads``: default one per physical core, as llama.cpp (and so Ollama) picks itself;
    llama-cpp-python's own default is half the logical CPUs (1 on a 2-core machine).
    ``vocab_only``: only the tokenizer (a vocab-only GGUF, or any GGUF without its weights).
    ``lora``: a llama.cpp LoRA adapter GGUF applied at scale 1 (what Ollama's ADAPTER does)."""
    try:
        import llama_cpp
    except ImportError:  # pragma: no cover - a hard dependency
        raise FtpackError("llama-cpp-python is not installed.", "pip install llama-cpp-python") from None
    gguf = Path(gguf)
    if not gguf.is_file():
        raise FtpackError(f"GGUF file not found: {gguf}", code=2)
    if not threads:
        from ftpack.core.cpu import physical_cores

        threads = physical_cores()
    kwargs: dict[str, Any] = {"n_ctx": n_ctx, "n_threads": threads, "n_threads_batch": threads, "seed": seed,
                              "logits_all": logits_all,
                              "verbose": _debug()}
    if n_batch is not None:
        kwargs["n_batch"] = n_batch
    if vocab_only:
        kwargs["vocab_only"] = True
    if lora is not None:
        if not Path(lora).is_file():
            raise FtpackError(f"LoRA adapter GGUF not found: {lora}", code=2)
        kwargs["lora_path"] = str(lora)
    try:
        if lora is None:
            return llama_cpp.Llama(model_path=str(gguf), **kwargs)
        from ftpack.core.quiet import quiet_libraries

        with quiet_libraries(stderr=True):  # llama.cpp logs a line per adapted tensor on a repacked base
            return llama_cpp.Llama(model_path=str(gguf), **kwargs)
    except (ValueError, RuntimeError) as exc:
        what = f"{gguf} with the adapter {lora}" if lora is not None else str(gguf)
        raise FtpackError(f"llama.cpp could not load {what}: {exc}",
                          "Check the file with `ftpack inspect`; rebuild it if it is damaged.") from None


@contextlib.contextmanager
def open_llama(gguf: str | Path, **kwargs: Any) -> Iterator[Any]:
    """:func:`load_llama` as a context manager that always closes the model."""
    llm = load_llama(gguf, **kwargs)
    try:
        yield llm
    finally:
        llm.close()


def stream_answer(llm, prompt: str, *, stop: Sequence[str], max_tokens: int, temperature: float = 0.0,
                  options: dict[str, Any] | None = None) -> Iterator[tuple[str, str | None]]:
    """Yield (text piece, finish_reason or None); BOS is added as the GGUF says, like Ollama.

    ``finish_reason`` is "stop" (EOS or a stop string) or "length" (``max_tokens`` reached).
    """
    opts = dict(options or {})
    kwargs = {k: opts[k] for k in SAMPLER_OPTIONS if k in opts}
    for chunk in llm.create_completion(prompt, max_tokens=max_tokens, temperature=temperature, stop=list(stop),
                                       stream=True, **kwargs):
        choice = chunk["choices"][0]
        yield choice.get("text") or "", choice.get("finish_reason")


def count_tokens(llm, text: str, *, add_bos: bool = False) -> int:
    """Tokens of ``text`` in the model's own vocabulary (special tokens parsed, as in a prompt)."""
    if not text:
        return 1 if add_bos else 0
    return len(llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))


def _debug() -> bool:
    """True under ``ftpack --debug`` (ftpack.core.quiet): then llama.cpp's own log is shown."""
    from ftpack.core.quiet import debug_enabled

    return debug_enabled()
