"""Verify: the quantized model answers and *stops*, the way Ollama will run it.

A model whose prompt format or stop strings differ from training "babbles": it never
emits the end-of-turn it learned, or emits it where Ollama does not stop. The smoke test
loads the quantized GGUF with llama-cpp-python (the same llama.cpp Ollama runs), renders
a sample conversation with the build's chat template (byte-identical to the Ollama
TEMPLATE, see tests/test_template_identity.py), lets llama.cpp add BOS as Ollama does,
generates greedily, and demands that generation ends with EOS or a stop string within
the token limit. When the model was registered with a reachable server, the same
question also goes through ``POST /api/chat``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from ftpack.core.errors import FtpackError

DEFAULT_QUESTION = "Hello! Who are you?"


@dataclass
class SmokeResult:
    """One greedy answer and how generation ended."""

    prompt: str
    answer: str
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    tokens: int
    max_tokens: int
    stop: list[str] = field(default_factory=list)

    @property
    def stopped(self) -> bool:
        return self.finish_reason == "stop"


def load_llama(gguf: str | Path, *, n_ctx: int = 2048, threads: int | None = None, seed: int = 0):
    """A llama.cpp model (llama-cpp-python), quiet; the caller closes it."""
    try:
        from llama_cpp import Llama
    except ImportError:  # pragma: no cover - a dependency
        raise FtpackError("llama-cpp-python is not installed.", "pip install llama-cpp-python") from None
    gguf = Path(gguf)
    if not gguf.is_file():
        raise FtpackError(f"GGUF file not found: {gguf}", code=2)
    try:
        return Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, seed=seed, verbose=False)
    except (ValueError, RuntimeError) as exc:
        raise FtpackError(f"llama.cpp could not load {gguf}: {exc}",
                          "Check the file with `ftpack inspect`; rebuild it if it is damaged.") from None


def stream_answer(llm, prompt: str, *, stop: Sequence[str], max_tokens: int, temperature: float = 0.0,
                  options: dict[str, Any] | None = None) -> Iterator[tuple[str, str | None]]:
    """Yield (text piece, finish_reason or None) from llama.cpp; BOS added as the GGUF says."""
    opts = dict(options or {})
    kwargs = {k: opts[k] for k in ("top_k", "top_p", "min_p", "repeat_penalty", "presence_penalty",
                                   "frequency_penalty", "seed") if k in opts}
    for chunk in llm.create_completion(prompt, max_tokens=max_tokens, temperature=temperature, stop=list(stop),
                                       stream=True, **kwargs):
        choice = chunk["choices"][0]
        yield choice.get("text") or "", choice.get("finish_reason")


def smoke_test(gguf: str | Path, messages: Sequence[dict[str, str]], *, template_name: str,
               stop: Sequence[str] | None = None, max_tokens: int = 128, n_ctx: int = 2048,
               llm=None) -> SmokeResult:
    """Greedy answer to ``messages`` (ending with a user turn) with the build's template and stops."""
    from ftpack.training.templates import load_template

    tpl = load_template(template_name)
    stop = list(stop if stop is not None else tpl.stop)
    prompt = tpl.inference_prompt(messages)
    own = llm is None
    llm = llm or load_llama(gguf, n_ctx=n_ctx)
    try:
        pieces, reason = [], None
        for piece, finish in stream_answer(llm, prompt, stop=stop, max_tokens=max_tokens):
            pieces.append(piece)
            reason = finish or reason
        answer = "".join(pieces)
        tokens = len(llm.tokenize(answer.encode("utf-8"), add_bos=False, special=True)) if answer else 0
    finally:
        if own:
            llm.close()
    return SmokeResult(prompt, answer, reason or "length", tokens, max_tokens, stop)


def require_stop(result: SmokeResult, template_name: str) -> None:
    """Fail with an explanation when the model ran into the token limit instead of stopping."""
    if result.stopped:
        return
    tail = result.answer[-200:]
    raise FtpackError(
        f"The model did not stop: it generated {result.max_tokens} tokens without an end-of-sequence token or "
        f"any stop string of the {template_name!r} template ({', '.join(map(repr, result.stop))}). "
        f"Ollama would let it ramble the same way. Last output: {tail!r}",
        "Train with the same chat template you serve (the build records it), make sure training computed "
        "the loss on the end-of-turn token (assistant-only loss with generation markers), or train longer.")


def first_user_turn(records_path: Path) -> list[dict[str, str]] | None:
    """The leading system turn(s) and first user turn of the first record in a messages JSONL."""
    try:
        with open(records_path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                msgs = json.loads(line).get("messages") or []
                out = []
                for m in msgs:
                    out.append({"role": m["role"], "content": m["content"]})
                    if m["role"] == "user":
                        return out
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None


def chat_via_server(name: str, messages: Sequence[dict[str, str]], *, host: str | None = None,
                    max_tokens: int = 128) -> str:
    """The registered model's answer through POST /api/chat (greedy, bounded)."""
    from ftpack.ollama.api import OllamaServer

    with OllamaServer(host) as server:
        return "".join(server.chat(name, list(messages), options={"temperature": 0, "num_predict": max_tokens}))


def server_reachable(host: str | None) -> bool:
    from ftpack.core.doctor import check_ollama

    return check_ollama(host, timeout=2.0).status == "ok"


def run_verify_stage(ctx):
    """Stage `verify`: smoke test, quantization fidelity, and /api/chat when registered.

    Reads: ``ctx.upstream_path("quantize")`` (the GGUF), ``ctx.upstream("data")``
    (metrics["template"]; ``data/eval.jsonl`` or ``data/train.jsonl`` for the sample
    question), ``ctx.upstream_path("convert")`` (F16 reference for fidelity), the
    ``register`` record when present (mode server → POST /api/chat if reachable), config
    ``system``. Writes ``verify/verify.json``; fails (FtpackError) when the model does not
    stop within the token limit.
    """
    from ftpack.core.atomic import write_json
    from ftpack.core.runner import StageResult

    cfg = ctx.config
    r = ctx.reporter
    gguf = ctx.upstream_path("quantize")
    data = ctx.upstream("data")
    template_name = data.metrics.get("template") or cfg.template
    data_dir = ctx.build_dir / "data"
    messages = None
    for name in ("eval.jsonl", "train.jsonl"):
        if (data_dir / name).is_file():
            messages = first_user_turn(data_dir / name)
            if messages:
                break
    messages = messages or [{"role": "user", "content": DEFAULT_QUESTION}]
    if cfg.system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": cfg.system}] + messages
    stop = None
    try:
        stop = ctx.upstream("modelfile").metrics.get("stop")
    except FtpackError:
        pass
    n_ctx = max(512, min(int(cfg.max_seq_length or 2048), 4096))
    result = smoke_test(gguf, messages, template_name=template_name, stop=stop, max_tokens=256, n_ctx=n_ctx)
    metrics: dict[str, Any] = {"question": messages[-1]["content"], "answer": result.answer,
                               "finish_reason": result.finish_reason, "answer_tokens": result.tokens,
                               "stopped": result.stopped}
    out = ctx.stage_dir / "verify.json"
    write_json(out, metrics)
    r.info(f"Q: {metrics['question']}")
    r.info(f"A: {result.answer.strip()}")
    require_stop(result, template_name)

    try:
        reference = ctx.upstream_path("convert")
    except FtpackError:
        reference = None
    if reference is not None and reference.is_file() and reference != gguf:
        from ftpack.inference.fidelity import FIXED_TEXT, WARN_RATIO, measure_fidelity

        texts = _eval_texts(data_dir, template_name) or [FIXED_TEXT]
        fid = measure_fidelity(reference, gguf, texts, max_tokens=1024, n_ctx=512)
        metrics.update(fid)
        r.info(f"fidelity: perplexity {fid['perplexity_reference']} -> {fid['perplexity_quantized']} "
               f"(x{fid['perplexity_ratio']}), top-1 agreement {fid['top1_agreement']:.1%}")
        if fid["perplexity_ratio"] > WARN_RATIO:
            r.warn(f"Quantization raised perplexity by x{fid['perplexity_ratio']}.",
                   "Try a larger quant type (--quant Q5_K_M or Q8_0).")

    try:
        reg = ctx.manifest.stages.get("register")
    except AttributeError:  # pragma: no cover
        reg = None
    if reg is not None and reg.status == "done" and reg.metrics.get("mode") == "server":
        if server_reachable(cfg.host):
            answer = chat_via_server(reg.metrics["name"], messages, host=cfg.host)
            metrics["ollama_answer"] = answer
            r.info(f"Ollama /api/chat: {answer.strip()}")
            if not answer.strip():
                raise FtpackError(f"Ollama answered {reg.metrics['name']} with an empty message.",
                                  "Check the model's TEMPLATE with `ollama show --template`.")
        else:
            r.warn("The Ollama server is not reachable now; skipped the /api/chat check.",
                   "Start it and run the build again to include it.")
    write_json(out, metrics)
    return StageResult(outputs=[out], main_output=out, metrics=metrics)


def _eval_texts(data_dir: Path, template_name: str, limit: int = 32) -> list[str]:
    """Whole conversations rendered as trained on (eval split first), for the fidelity measure."""
    from ftpack.training.templates import load_template

    tpl = load_template(template_name)
    texts: list[str] = []
    for name in ("eval.jsonl", "train.jsonl"):
        p = data_dir / name
        if not p.is_file():
            continue
        with open(p, encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    texts.append(tpl.training_text(json.loads(line)["messages"]))
                except (ValueError, KeyError, TypeError):
                    continue
                if len(texts) >= limit:
                    return texts
        if texts:
            return texts
    return texts
