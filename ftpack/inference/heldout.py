"""Ask a model questions it was not trained on, and check the answers' keywords.

Used by the README demo (the fine-tuned model next to its base) and by the end-to-end
test on SmolLM2. A held-out file is JSONL with ``question`` and ``keywords``: the key
facts a correct answer must all state; ``wrong`` (optional): the values an answer must not
state — the same kind of fact the data gives elsewhere ("E1", "E7" for a question whose
answer is "E6"), so that a hedged "E1, E6 or E7" is wrong; ``answer`` is optional.

Scoring is strict (:func:`states`): each key fact must appear as whole words or a whole
number, case-insensitively, with any run of spaces or dashes between its words — "12"
is not found in "120", "2012" or "1.2", "E1" not in "E10", "2.4.1" not in "2.4.10".
Thousands separators ("6,400") and Unicode dashes/spaces are normalised first.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ftpack.core.errors import bad_input


@dataclass
class HeldoutResult:
    question: str
    keywords: list[str]
    answer: str
    wrong: list[str] = field(default_factory=list)  # values a correct answer must not state

    @property
    def correct(self) -> bool:
        """Every key fact is stated and no wrong alternative is (:func:`states`)."""
        return (bool(self.keywords) and all(states(self.answer, k) for k in self.keywords)
                and not any(states(self.answer, w) for w in self.wrong))

    @property
    def hedged(self) -> list[str]:
        """The wrong alternatives the answer states."""
        return [w for w in self.wrong if states(self.answer, w)]


def result_of(record: dict, answer: str) -> HeldoutResult:
    """One held-out record's answer, scored with the record's key facts and wrong alternatives."""
    return HeldoutResult(record["question"], [str(k) for k in record["keywords"]], answer,
                         [str(w) for w in record.get("wrong") or []])


_SPACES_AND_DASHES = str.maketrans({**{c: "-" for c in "\u2010\u2011\u2012\u2013\u2014\u2212"},
                                    **{c: " " for c in "\u00a0\u2009\u202f"}})


def _normalise(text: str) -> str:
    text = text.translate(_SPACES_AND_DASHES).lower()
    return re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)  # 6,400 -> 6400


def states(answer: str, fact: str) -> bool:
    """Whether ``answer`` states ``fact`` as whole words / a whole number (see the module
    docstring): no letter or digit may touch it on either side, and a number may not
    continue (a decimal point or a further digit group)."""
    words = _normalise(fact).split()
    if not words:
        return False
    body = r"[\s-]+".join(re.escape(w) for w in words)
    pattern = rf"(?<![0-9a-z])(?<![0-9][.,]){body}(?![0-9a-z])(?![.,][0-9])"
    return re.search(pattern, _normalise(answer)) is not None


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
        if not isinstance(rec.get("wrong", []), list):
            raise bad_input(f"{path}:{n}: 'wrong' must be a list of the values an answer must not state.")
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
            results.append(result_of(rec, r.answer.strip()))
    return results


def answers_key(gguf: Path, records: Sequence[dict], *, template_name: str, system: str | None,
                max_tokens: int, n_ctx: int) -> str:
    """What greedy answers depend on: the GGUF (path, size, modification time), the
    questions, the chat format, the system prompt, the limits and llama.cpp's version."""
    import hashlib
    import importlib.metadata

    st = Path(gguf).stat()
    try:
        runtime = importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source checkout
        runtime = "unknown"
    key = json.dumps({"gguf": str(Path(gguf).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                      "questions": [r["question"] for r in records], "template": template_name, "system": system,
                      "max_tokens": max_tokens, "n_ctx": n_ctx, "llama_cpp": runtime}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()


def ask_all_cached(gguf: Path, records: Sequence[dict], *, template_name: str, system: str | None = None,
                   max_tokens: int = 96, n_ctx: int = 1024) -> tuple[list[HeldoutResult], bool]:
    """:func:`ask_all` for a GGUF that does not change between builds (a base): greedy
    decoding gives the same answers every time, so they are kept in ftpack's cache
    (``heldout-answers/``) and scored again with the records' current key facts.
    Returns (results, whether they came from the cache)."""
    from ftpack.core.atomic import write_json
    from ftpack.core.locations import cache_dir

    key = answers_key(gguf, records, template_name=template_name, system=system, max_tokens=max_tokens, n_ctx=n_ctx)
    path = cache_dir() / "heldout-answers" / f"{key}.json"
    try:
        answers = json.loads(path.read_text(encoding="utf-8"))["answers"]
        if isinstance(answers, list) and len(answers) == len(records) and all(isinstance(a, str) for a in answers):
            return [result_of(r, a) for r, a in zip(records, answers)], True
    except (OSError, ValueError, KeyError, TypeError):
        pass
    results = ask_all(gguf, records, template_name=template_name, system=system, max_tokens=max_tokens, n_ctx=n_ctx)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"gguf": str(gguf), "answers": [r.answer for r in results]})
    return results, False


def build_outputs(build_dir: Path) -> tuple[Path, str, str]:
    """(quantized GGUF, template name, base) of a finished build, read through its manifest."""
    from ftpack.core.manifest import Manifest
    from ftpack.inference.chat import built_model

    gguf, template, _ = built_model(Path(build_dir))
    return gguf, template, Manifest.load(Path(build_dir)).config.get("base", "")
