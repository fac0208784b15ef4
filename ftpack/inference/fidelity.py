"""How much quantization changed the model, measured with llama.cpp itself.

The figures ``llama-perplexity --kl-divergence`` reports, computed from llama-cpp-python
logits of both models over the same token ids: the KL divergence of the quantized
model's next-token distribution from the reference (F16) model's at every position
(mean, median, 99th percentile), top-1 agreement (how often both predict the same next
token), and the perplexity of both and their ratio. Unlike llama-perplexity, every
position of a window is scored (it scores the second half of each chunk only), so the
figures are comparable with each other, not digit for digit with its output.

The reference's log-probabilities are computed once and kept in a temporary file
(tokens × vocabulary float32), so several quantized candidates are compared against
one reference run (:class:`FidelityReference`, used by ``--quant auto``).

Honesty: a build measures on its eval split, which the importance matrix never sees
(:func:`heldout_texts`); without an eval split it uses :data:`FIXED_TEXT`, which is not
part of the importance matrix's generic top-up text either.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

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
#: Tokens scored per comparison (the build's verify stage and ``--quant auto`` alike).
FIDELITY_TOKENS = 2048
#: Eval conversations rendered for the measure at most.
MAX_TEXTS = 64
_ROWS = 64  # positions per log-softmax block (bounds float64 memory to 64 × vocabulary)


def _token_windows(tokens: Sequence[int], n_ctx: int) -> list[list[int]]:
    return [list(tokens[i:i + n_ctx]) for i in range(0, len(tokens), n_ctx) if len(tokens[i:i + n_ctx]) > 1]


def _log_softmax(logits: Any) -> Any:
    import numpy as np

    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))


def _window_logits(llm, window: Sequence[int]):
    """Next-token logits for every position of ``window`` but the last (rows × vocabulary)."""
    llm.reset()
    llm.eval(list(window))
    return llm.scores[:len(window) - 1]


def tokenize_texts(llm, texts: Iterable[str], max_tokens: int) -> list[int]:
    """Token ids of the texts, each with BOS as the runtime adds it, up to ``max_tokens``."""
    ids: list[int] = []
    for t in texts:
        ids += llm.tokenize(t.encode("utf-8"), add_bos=True, special=True)
        if len(ids) >= max_tokens:
            break
    return ids[:max_tokens]


class FidelityReference:
    """The reference model's log-probabilities over fixed token windows, to compare
    any number of quantized models against (close it, or use it as a context manager)."""

    def __init__(self, reference: Path, texts: Sequence[str], *, max_tokens: int = FIDELITY_TOKENS,
                 n_ctx: int = 512, threads: int | None = None, workdir: Path | None = None):
        import numpy as np

        from ftpack.inference.runtime import open_llama

        self.reference = Path(reference)
        self.opts = {"n_ctx": n_ctx, "threads": threads, "logits_all": True, "n_batch": min(n_ctx, 512)}
        with open_llama(self.reference, **self.opts) as llm:  # the reference tokenizes too: one load
            self.windows = _token_windows(tokenize_texts(llm, texts, max_tokens), n_ctx)
            if not self.windows:
                raise ValueError("no text to measure fidelity on")
            self.n_tokens = sum(len(w) - 1 for w in self.windows)
            self.n_vocab = llm.n_vocab()
            self._file = tempfile.NamedTemporaryFile(prefix="ftpack-fidelity-", suffix=".f32", dir=workdir)
            self.logprobs = np.memmap(self._file.name, dtype=np.float32, mode="w+", shape=(self.n_tokens, self.n_vocab))
            self.targets = np.concatenate([np.asarray(w[1:], dtype=np.int64) for w in self.windows])
            self.nll = np.empty(self.n_tokens, dtype=np.float64)
            self.top1 = np.empty(self.n_tokens, dtype=np.int64)
            pos = 0
            for w in self.windows:
                logits = _window_logits(llm, w)
                for start in range(0, len(logits), _ROWS):
                    lp = _log_softmax(logits[start:start + _ROWS])
                    rows = slice(pos + start, pos + start + len(lp))
                    self.logprobs[rows] = lp
                    self.nll[rows] = -lp[np.arange(len(lp)), self.targets[rows]]
                    self.top1[rows] = lp.argmax(axis=1)
                pos += len(logits)

    def compare(self, quantized: Path) -> dict[str, Any]:
        """Fidelity figures of ``quantized`` against the reference (see the module docstring)."""
        import numpy as np

        from ftpack.inference.runtime import open_llama

        kld = np.empty(self.n_tokens, dtype=np.float64)
        nll = np.empty(self.n_tokens, dtype=np.float64)
        same = np.empty(self.n_tokens, dtype=bool)
        pos = 0
        with open_llama(Path(quantized), **self.opts) as llm:
            if llm.n_vocab() != self.n_vocab:
                raise ValueError(f"{quantized} has {llm.n_vocab()} tokens, the reference {self.n_vocab}")
            for w in self.windows:
                logits = _window_logits(llm, w)
                for start in range(0, len(logits), _ROWS):
                    lq = _log_softmax(logits[start:start + _ROWS])
                    rows = slice(pos + start, pos + start + len(lq))
                    lr = np.asarray(self.logprobs[rows], dtype=np.float64)
                    kld[rows] = np.maximum((np.exp(lr) * (lr - lq)).sum(axis=1), 0.0)
                    nll[rows] = -lq[np.arange(len(lq)), self.targets[rows]]
                    same[rows] = lq.argmax(axis=1) == self.top1[rows]
                pos += len(logits)
        n = self.n_tokens
        ppl_r, ppl_q = math.exp(float(self.nll.mean())), math.exp(float(nll.mean()))
        return {
            "tokens": n,
            "perplexity_reference": round(ppl_r, 4),
            "perplexity_quantized": round(ppl_q, 4),
            "perplexity_ratio": round(ppl_q / ppl_r, 4),
            "top1_agreement": round(float(same.mean()), 4),
            "mean_kld": round(float(kld.mean()), 6),
            "mean_kld_stderr": round(float(kld.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0, 6),
            "median_kld": round(float(np.median(kld)), 6),
            "p99_kld": round(float(np.percentile(kld, 99)), 6),
            "highest_kld": round(float(kld.max()), 6),
        }

    def close(self) -> None:
        logprobs = getattr(self, "logprobs", None)
        if logprobs is not None:
            del self.logprobs
        if getattr(self, "_file", None) is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "FidelityReference":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def measure_fidelity(reference: Path, quantized: Path, texts: Sequence[str], *, max_tokens: int = FIDELITY_TOKENS,
                     n_ctx: int = 512, threads: int | None = None) -> dict:
    """KL divergence, perplexities, their ratio and top-1 agreement of ``quantized``
    against ``reference`` over ``texts``."""
    with FidelityReference(reference, texts, max_tokens=max_tokens, n_ctx=n_ctx, threads=threads) as ref:
        return ref.compare(quantized)


def heldout_texts(layout: Any, template: Any = None, *, limit: int = MAX_TEXTS) -> tuple[list[str], str]:
    """(texts, where they come from) for measuring a build's fidelity honestly: its eval
    split rendered with the build's chat template (never the train split, which the
    importance matrix is computed from), else :data:`FIXED_TEXT`."""
    from ftpack.training.data import read_messages_jsonl

    if layout.eval_file.is_file():
        conversations = read_messages_jsonl(layout.eval_file)[:limit]
        if conversations:
            if template is None:
                from ftpack.training.templates import template_of_build

                template = template_of_build(layout)
            return ([template.training_text(conv) for conv in conversations],
                    f"the eval split ({len(conversations)} conversations, never used for the importance matrix)")
    return [FIXED_TEXT], "ftpack's fixed text (the build has no eval split)"
