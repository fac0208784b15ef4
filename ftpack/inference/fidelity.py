"""How much quantization changed the model, measured with llama.cpp itself.

Perplexity of the reference (F16) and the quantized GGUF over the same token ids,
their ratio, and top-1 agreement (how often both predict the same next token).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

#: Used when a build has no eval split: plain prose any model has seen the like of.
FIXED_TEXT = (
    "The history of the bicycle begins in the early nineteenth century, when inventors in Europe "
    "experimented with two-wheeled machines pushed along by the rider's feet. Pedals attached to the "
    "front wheel came decades later, and the chain-driven safety bicycle of the 1880s finally gave "
    "riders a comfortable, stable machine with wheels of equal size. Cheap and fast, it changed how "
    "people travelled to work, courted, and explored the countryside, and it pushed cities to pave "
    "their roads. Today engineers still refine its frame, gears and brakes, yet the basic shape has "
    "hardly changed in more than a century."
)

#: Warn when the quantized model's perplexity is more than this factor above the reference.
WARN_RATIO = 1.25
#: Warn when the quantized model predicts the reference's next token less often than this.
#: (Perplexity alone misses a broken quantization of a near-uniform model: tiny Q2_K keeps it
#: and agrees on 4% of tokens.)
WARN_AGREEMENT = 0.5


def _token_windows(tokens: Sequence[int], n_ctx: int) -> list[list[int]]:
    return [list(tokens[i:i + n_ctx]) for i in range(0, len(tokens), n_ctx) if len(tokens[i:i + n_ctx]) > 1]


def _score(llm, windows: list[list[int]]):
    """(sum of next-token NLL, count, top-1 predictions) of one model over the windows."""
    import numpy as np

    nll, count, top1 = 0.0, 0, []
    for w in windows:
        llm.reset()
        llm.eval(w)
        logits = np.asarray(llm.scores[:len(w) - 1], dtype=np.float64)
        m = logits.max(axis=1, keepdims=True)
        logz = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
        targets = np.asarray(w[1:])
        nll += float((logz - logits[np.arange(len(targets)), targets]).sum())
        count += len(targets)
        top1.append(logits.argmax(axis=1))
    return nll, count, np.concatenate(top1) if top1 else np.zeros(0, dtype=int)


def tokenize_texts(llm, texts: Iterable[str], max_tokens: int) -> list[int]:
    """Token ids of the texts, each with BOS as the runtime adds it, up to ``max_tokens``."""
    ids: list[int] = []
    for t in texts:
        ids += llm.tokenize(t.encode("utf-8"), add_bos=True, special=True)
        if len(ids) >= max_tokens:
            break
    return ids[:max_tokens]


def measure_fidelity(reference: Path, quantized: Path, texts: Sequence[str], *, max_tokens: int = 2048,
                     n_ctx: int = 512, threads: int | None = None) -> dict:
    """Perplexities, their ratio and top-1 agreement of ``quantized`` against ``reference``."""
    from ftpack.inference.runtime import open_llama

    opts = {"n_ctx": n_ctx, "threads": threads, "logits_all": True, "n_batch": min(n_ctx, 512)}
    with open_llama(reference, **opts) as llm:  # the reference model tokenizes too: one load per model
        windows = _token_windows(tokenize_texts(llm, texts, max_tokens), n_ctx)
        if not windows:
            raise ValueError("no text to measure fidelity on")
        nll_r, n, top_r = _score(llm, windows)
    with open_llama(quantized, **opts) as llm:
        nll_q, _, top_q = _score(llm, windows)
    ppl_r, ppl_q = math.exp(nll_r / n), math.exp(nll_q / n)
    return {
        "tokens": n,
        "perplexity_reference": round(ppl_r, 4),
        "perplexity_quantized": round(ppl_q, 4),
        "perplexity_ratio": round(ppl_q / ppl_r, 4),
        "top1_agreement": round(float((top_r == top_q).mean()), 4),
    }
