"""Ask a model questions it was not trained on, and check the answers' keywords.

Used by the README demo (the fine-tuned model next to its base) and by the end-to-end
test on SmolLM2. A held-out file is JSONL with ``question`` and ``keywords`` (strings a
correct answer must all contain, case-insensitively); ``answer`` is optional.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ftpack.core.errors import bad_input


@dataclass
class HeldoutResult:
    question: str
    keywords: list[str]
    answer: str

    @property
    def correct(self) -> bool:
        low = self.answer.lower()
        return all(k.lower() in low for k in self.keywords)


def read_heldout(path: Path) -> list[dict]:
    """The records of a held-out JSONL file, checked."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            raise bad_input(f"{path}:{n}: invalid JSON ({exc.msg}).") from None
        if not isinstance(rec.get("question"), str) or not isinstance(rec.get("keywords"), list):
            raise bad_input(f"{path}:{n}: needs a 'question' string and a 'keywords' list.")
        out.append(rec)
    return out


def ask_all(gguf: Path, records: Sequence[dict], *, template_name: str, system: str | None = None,
            max_tokens: int = 96, n_ctx: int = 1024, lora: Path | None = None) -> list[HeldoutResult]:
    """Greedy answers of one GGUF (with ``lora``: a LoRA adapter GGUF on it) to every question
    (one model load for all)."""
    from ftpack.inference.runtime import open_llama
    from ftpack.inference.verify import AnswerLimit, smoke_test

    limit = AnswerLimit(max_tokens, f"held-out answers take at most {max_tokens} tokens")
    results = []
    with open_llama(gguf, n_ctx=n_ctx, lora=lora) as llm:
        for rec in records:
            messages = ([{"role": "system", "content": system}] if system else []) + \
                       [{"role": "user", "content": rec["question"]}]
            r = smoke_test(llm, messages, template_name=template_name, limit=limit)
            results.append(HeldoutResult(rec["question"], [str(k) for k in rec["keywords"]], r.answer.strip()))
    return results


def build_outputs(build_dir: Path) -> tuple[Path, str, str]:
    """(quantized GGUF, template name, base) of a finished build, read through its manifest."""
    from ftpack.core.manifest import Manifest
    from ftpack.inference.chat import built_model

    gguf, template, _ = built_model(Path(build_dir))
    return gguf, template, Manifest.load(Path(build_dir)).config.get("base", "")
