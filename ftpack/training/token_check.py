"""Prove, before training, that the model will train on exactly the tokens Ollama will send.

Training tokenizes the rendered chat with the Hugging Face tokenizer; at inference
Ollama renders the same text from its TEMPLATE and llama.cpp tokenizes it with the
vocabulary stored in the GGUF. If the two tokenizers disagree anywhere (a space before a
word, a ``</s>`` boundary, a run of digits), the model is trained on one token sequence
and queried with another. So the data stage writes a *vocab-only* GGUF with the very
code that will write the model's GGUF (ftpack's converter for the llama family,
llama.cpp's own ``convert_hf_to_gguf.py --vocab-only`` otherwise), loads it in llama.cpp,
and compares the ids of a sample of the user's own conversations. A mismatch stops the
build and shows the first differing position.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ftpack.core.atomic import atomic_path
from ftpack.core.errors import FtpackError

#: how many conversations the data stage checks (all of them when there are fewer)
DEFAULT_SAMPLE = 256


@dataclass
class TokenCheck:
    """What was compared: how many conversations, and how many tokens, all equal."""

    checked: int
    tokens: int
    vocab_gguf: str
    mismatches: list[dict[str, Any]] = field(default_factory=list)

    def as_metrics(self) -> dict[str, Any]:
        return {"tokenization_checked": self.checked, "tokenization_tokens": self.tokens,
                "tokenization_equal": not self.mismatches}


def write_vocab_gguf(model_dir: Path, out: Path) -> Path:
    """A GGUF with the model's hyper-parameters and tokenizer but no tensors, written by
    the converter that will write the real model (llama.cpp loads it with vocab_only)."""
    import gguf

    from ftpack.core.quiet import quiet_libraries
    from ftpack.core.report import silenced
    from ftpack.gguf.convert import ARCHITECTURES, write_hyperparameters, write_tokenizer
    from ftpack.gguf.hf_folder import load_hf_config

    model_dir, out = Path(model_dir), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = load_hf_config(model_dir)
    spec = ARCHITECTURES.get((config.get("architectures") or [""])[0])
    if spec is None:
        from ftpack.gguf.vendored import llama_cpp_source, run_converter

        with atomic_path(out) as tmp:
            run_converter(llama_cpp_source(), model_dir, tmp, "f16", ["--vocab-only"], what="vocabulary")
        return out
    writer = gguf.GGUFWriter(path=None, arch=spec.gguf_arch)
    writer.add_type("model")
    writer.add_name(model_dir.name)
    write_hyperparameters(writer, config, spec)
    with quiet_libraries(), silenced():  # its "no chat template" note is about the model GGUF, not this one
        write_tokenizer(writer, model_dir, config)
    with atomic_path(out) as tmp:
        try:
            writer.write_header_to_file(path=tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
        finally:
            writer.close()
    return out


def sample_conversations(conversations: Sequence[Any], n: int, seed: int = 0) -> list[int]:
    """Indices of up to ``n`` conversations: the first, the longest, then a seeded sample."""
    if len(conversations) <= n:
        return list(range(len(conversations)))
    longest = max(range(len(conversations)), key=lambda i: sum(len(m["content"]) for m in conversations[i]))
    rest = [i for i in range(len(conversations)) if i not in (0, longest)]
    picked = [0, longest] + random.Random(seed).sample(rest, n - 2)
    return sorted(set(picked))


def training_ids(tokenizer: Any, template: Any, messages: Sequence[Any]) -> list[int]:
    """The ids training sees for one conversation: the training template rendered as TRL
    renders it, tokenized with ``add_special_tokens=False`` (see ftpack.training.templates)."""
    from ftpack.training.templates import render_chat, training_chat_template

    if getattr(template, "renders_ollama", False):  # an Ollama model's TEMPLATE: ftpack.training.ollama_format
        from ftpack.training.ollama_format import encode_conversation

        return encode_conversation(template, tokenizer, messages, masks=False)[-1]["input_ids"]
    text = render_chat(training_chat_template(template, tokenizer), messages,
                       bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or "")
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass
class TrainedTokens:
    """One conversation as training sees it (what `ftpack data --show-tokens` prints)."""

    text: str  # the exact training string; a BOS the template adds is written as its token text
    input_ids: list[int]
    train: list[int]  # 1 where the token carries loss (assistant text and its end of turn)
    pieces: list[str]


def trained_tokens(tokenizer: Any, template: Any, messages: Sequence[Any], *,
                   train_on_prompts: bool = False) -> TrainedTokens:
    """Text, ids and loss mask exactly as TRL builds them for assistant-only loss: the training
    template (installed in the tokenizer) through ``apply_chat_template`` with
    ``return_assistant_tokens_mask``."""
    from ftpack.training.templates import training_chat_template

    if getattr(template, "renders_ollama", False):  # an Ollama model's TEMPLATE: ftpack.training.ollama_format
        from ftpack.training.ollama_format import conversation_text, encode_conversation

        row = encode_conversation(template, tokenizer, messages)[-1]
        ids = row["input_ids"]
        mask = [1] * len(ids) if train_on_prompts else row["assistant_masks"]
        return TrainedTokens(conversation_text(template, messages), ids, mask, tokenizer.convert_ids_to_tokens(ids))
    jinja = training_chat_template(template, tokenizer)
    chat = [dict(m) for m in messages]
    text = tokenizer.apply_chat_template(chat, chat_template=jinja, tokenize=False)
    out = tokenizer.apply_chat_template(chat, chat_template=jinja, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    ids = list(out["input_ids"])
    mask = [1] * len(ids) if train_on_prompts else [int(x) for x in out["assistant_masks"]]
    return TrainedTokens(text, ids, mask, tokenizer.convert_ids_to_tokens(ids))


def inference_text(tokenizer: Any, template: Any, messages: Sequence[Any]) -> str:
    """The text Ollama renders for the same conversation (no leading BOS: llama.cpp adds it)."""
    from ftpack.training.templates import render_chat

    return render_chat(template, messages, bos_token=tokenizer.bos_token or "",
                       eos_token=tokenizer.eos_token or "")


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def check_tokenization(tokenizer: Any, template: Any, conversations: Sequence[Any], vocab_gguf: Path, *,
                       sample: int = DEFAULT_SAMPLE, seed: int = 0, raise_on_mismatch: bool = True) -> TokenCheck:
    """Compare training ids with llama.cpp's ids for a sample of ``conversations``."""
    from ftpack.inference.runtime import open_llama

    picked = sample_conversations(conversations, sample, seed)
    check = TokenCheck(checked=len(picked), tokens=0, vocab_gguf=str(vocab_gguf))
    from ftpack.core.quiet import quiet_libraries

    with quiet_libraries(stderr=True), open_llama(Path(vocab_gguf), vocab_only=True) as llm:
        for i in picked:
            messages = conversations[i]
            ours = training_ids(tokenizer, template, messages)
            theirs = llm.tokenize(inference_text(tokenizer, template, messages).encode("utf-8"),
                                  add_bos=True, special=True)
            check.tokens += len(ours)
            pos = first_difference(ours, theirs)
            if pos is not None:
                check.mismatches.append(_describe(i, pos, ours, theirs, tokenizer))
    if check.mismatches and raise_on_mismatch:
        m = check.mismatches[0]
        raise FtpackError(
            f"Tokenization differs between training and llama.cpp/Ollama in {len(check.mismatches)} of "
            f"{check.checked} checked conversations. First: record {m['record']}, token {m['position']}:\n"
            f"  training : {m['training']}\n  llama.cpp: {m['llama_cpp']}\n  text near: {m['text']!r}",
            "The model would be trained on other tokens than it is queried with. Report this with the base's "
            "name; a --template whose text avoids the construct, or another base, works around it.")
    return check


def _describe(record: int, pos: int, ours: Sequence[int], theirs: Sequence[int], tokenizer: Any) -> dict[str, Any]:
    lo = max(0, pos - 3)
    window = slice(lo, pos + 4)
    return {"record": record, "position": pos,
            "training": tokenizer.convert_ids_to_tokens(list(ours[window])),
            "llama_cpp": tokenizer.convert_ids_to_tokens(list(theirs[window])),
            "text": tokenizer.decode(list(ours[lo:pos + 4]))}
