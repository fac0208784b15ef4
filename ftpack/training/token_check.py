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

# -- llama.cpp's whitespace stripping around special tokens follows general.name ---------------
#
# Hugging Face tokenizers carry ``lstrip``/``rstrip`` per added token (Phi-3's chat markers
# swallow the newline after them). A GGUF has no such flags: llama.cpp (src/llama-vocab.cpp,
# ``load``, llama-cpp-python 0.3.36) sets them itself, and for a causal LM only one way: when
# the lower-cased ``general.name`` contains "phi-3" or "phi3", every special token (types
# control, user-defined, unknown) strips the whitespace after it except ``<unk>``, ``<s>`` and
# ``<|endoftext|>`` (looked up by text: loading fails when one is missing), and ``</s>`` does
# too; with any other name no token strips anything. So ftpack picks, per base, the one of
# these two behaviours closest to the base's own flags (:func:`llama_cpp_rstrips`), sets the
# training tokenizer's flags to exactly it (:func:`align_strip_flags`, applied wherever
# ftpack loads a tokenizer) and writes a GGUF name that selects it (:func:`gguf_model_name`).

#: lower-cased general.name substrings that switch llama.cpp's Phi-3 rule on
LLAMA_CPP_RSTRIP_NAMES = ("phi-3", "phi3")
#: tokens the rule leaves alone; llama.cpp needs each of them and ``</s>`` in the vocabulary
LLAMA_CPP_RSTRIP_EXCEPT = ("<unk>", "<s>", "<|endoftext|>")
_RULE_NEEDS = (*LLAMA_CPP_RSTRIP_EXCEPT, "</s>")


def name_rstrips(name: str | None) -> bool:
    """Whether llama.cpp applies its Phi-3 rule to a GGUF with this general.name."""
    low = (name or "").lower()
    return any(mark in low for mark in LLAMA_CPP_RSTRIP_NAMES)


def gguf_model_name(name: str, rstrip: bool) -> str:
    """``name`` adjusted so that llama.cpp strips after special tokens exactly when ``rstrip``:
    "phi3"/"phi-3" inside it become "phi 3" when it must not, and " (phi-3)" is appended
    when it must and does not say so."""
    import re

    if rstrip:
        return name if name_rstrips(name) else f"{name} (phi-3)"
    return re.sub(r"(?i)(phi)-?(3)", r"\1 \2", name)


def _added_tokens(tokenizer: Any) -> dict[int, Any]:
    try:
        return dict(tokenizer.added_tokens_decoder)
    except (AttributeError, TypeError, NotImplementedError):
        return {}


def _wanted_rstrip(content: str, rule: bool) -> bool:
    return rule and content not in LLAMA_CPP_RSTRIP_EXCEPT


def llama_cpp_rstrips(tokenizer: Any) -> bool:
    """Which of llama.cpp's two behaviours to train and ship with: True (the Phi-3 rule) when
    the vocabulary has the tokens the rule needs and it changes fewer of the tokenizer's own
    ``rstrip``/``lstrip`` flags than "no token strips"; a tokenizer whose flags already match
    one behaviour (every tokenizer ftpack saved) keeps it."""
    added = _added_tokens(tokenizer)
    try:
        vocab = tokenizer.get_vocab()
    except (AttributeError, TypeError, NotImplementedError):
        return False
    if not added or not all(t in vocab for t in _RULE_NEEDS):
        return False

    def changes(rule: bool) -> int:
        return sum((bool(a.rstrip) != _wanted_rstrip(str(a.content), rule)) + bool(a.lstrip) for a in added.values())

    return changes(True) < changes(False)


def align_strip_flags(tokenizer: Any) -> bool:
    """Set every added token's ``rstrip``/``lstrip`` to what llama.cpp will do with the GGUF
    ftpack writes for this tokenizer (:func:`llama_cpp_rstrips`); returns that behaviour.

    Changes the tokenizer in place (``save_pretrained`` keeps the flags, so the trained
    model's tokenizer says what training did). A tokenizer without a ``tokenizers`` backend
    is left as it is; the build's tokenization checks still compare it with llama.cpp."""
    rule = llama_cpp_rstrips(tokenizer)
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or not hasattr(backend, "add_special_tokens"):
        return rule
    from tokenizers import AddedToken

    special, plain = [], []
    for a in _added_tokens(tokenizer).values():
        rstrip = _wanted_rstrip(str(a.content), rule)
        if bool(a.rstrip) == rstrip and not a.lstrip:
            continue
        fixed = AddedToken(str(a.content), single_word=a.single_word, lstrip=False, rstrip=rstrip,
                           normalized=a.normalized, special=a.special)
        (special if a.special else plain).append(fixed)
    if special:
        backend.add_special_tokens(special)
    if plain:
        backend.add_tokens(plain)
    return rule


def folder_rstrips(tok_dir: Path) -> bool:
    """:func:`llama_cpp_rstrips` for the tokenizer ftpack loads from ``tok_dir``. Without a
    strip flag in its tokenizer files the answer is False without loading it."""
    import re

    flag = re.compile(r'"[lr]strip"\s*:\s*true')
    files = [Path(tok_dir) / n for n in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")]
    if not any(f.is_file() and flag.search(f.read_text(encoding="utf-8", errors="replace")) for f in files):
        return False
    from ftpack.training.bases import load_tokenizer

    return llama_cpp_rstrips(load_tokenizer(Path(tok_dir)))


def build_gguf_name(name: str, tokenizer: Any) -> str:
    """The general.name of every GGUF a build writes (vocab-only and final): ``name`` (the
    build's), adjusted to the strip behaviour its training tokenizer has."""
    return gguf_model_name(name, llama_cpp_rstrips(tokenizer))


@dataclass
class TokenCheck:
    """What was compared: how many conversations, and how many tokens, all equal."""

    checked: int
    tokens: int
    vocab_gguf: str
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    turns: int = 0  # answers whose served prompt was compared too

    def as_metrics(self) -> dict[str, Any]:
        return {"tokenization_checked": self.checked, "tokenization_tokens": self.tokens,
                "tokenization_turns": self.turns, "tokenization_equal": not self.mismatches}


def write_vocab_gguf(model_dir: Path, out: Path, name: str | None = None) -> Path:
    """A GGUF with the model's hyper-parameters and tokenizer but no tensors, written by
    the converter that will write the real model (llama.cpp loads it with vocab_only).

    ``name``: its general.name, the build's (:func:`build_gguf_name`), which decides how
    llama.cpp strips whitespace after special tokens; default: the folder's name, adjusted
    to its tokenizer (:func:`folder_rstrips`)."""
    import gguf

    from ftpack.core.quiet import quiet_libraries
    from ftpack.core.report import silenced
    from ftpack.gguf.convert import ARCHITECTURES, write_hyperparameters, write_tokenizer
    from ftpack.gguf.hf_folder import load_hf_config
    from ftpack.gguf.vendored import config_architecture

    model_dir, out = Path(model_dir), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if name is None:
        name = gguf_model_name(model_dir.name, folder_rstrips(model_dir))
    config = load_hf_config(model_dir)
    spec = ARCHITECTURES.get(config_architecture(config) or "")
    if spec is None:
        from ftpack.gguf.vendored import llama_cpp_source, run_converter

        with atomic_path(out) as tmp:
            run_converter(llama_cpp_source(), model_dir, tmp, "f16", ["--vocab-only"], what="vocabulary",
                          model_name=name)
        return out
    writer = gguf.GGUFWriter(path=None, arch=spec.gguf_arch)
    writer.add_type("model")
    writer.add_name(name)
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

    if getattr(template, "renders_ollama", False):  # an Ollama model's own format: its last sequence
        return trained_sequences(tokenizer, template, messages, train_on_prompts=train_on_prompts)[-1]
    jinja = training_chat_template(template, tokenizer)
    chat = [dict(m) for m in messages]
    text = tokenizer.apply_chat_template(chat, chat_template=jinja, tokenize=False)
    out = tokenizer.apply_chat_template(chat, chat_template=jinja, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    ids = list(out["input_ids"])
    mask = [1] * len(ids) if train_on_prompts else [int(x) for x in out["assistant_masks"]]
    return TrainedTokens(text, ids, mask, tokenizer.convert_ids_to_tokens(ids))


def trained_sequences(tokenizer: Any, template: Any, messages: Sequence[Any], *,
                      train_on_prompts: bool = False) -> list[TrainedTokens]:
    """Every sequence one conversation trains as (`ftpack data --show-tokens`): one for ftpack's
    formats; for an Ollama model's own format one per answer when its prompts are not
    prefix-stable (each ending with that answer, after the exact prompt Ollama serves for it)."""
    if not getattr(template, "renders_ollama", False):
        return [trained_tokens(tokenizer, template, messages, train_on_prompts=train_on_prompts)]
    from ftpack.training.ollama_format import encoded_sequences

    return [TrainedTokens(text, row["input_ids"], [1] * len(row["input_ids"]) if train_on_prompts
                          else row["assistant_masks"], tokenizer.convert_ids_to_tokens(row["input_ids"]))
            for text, _, row in encoded_sequences(template, tokenizer, messages)]


def inference_text(tokenizer: Any, template: Any, messages: Sequence[Any]) -> str:
    """The text Ollama renders for the same conversation (no leading BOS: llama.cpp adds it)."""
    from ftpack.training.templates import render_chat

    return render_chat(template, messages, bos_token=tokenizer.bos_token or "",
                       eos_token=tokenizer.eos_token or "")


def served_prompt_ids(tokenizer: Any, template: Any, messages: Sequence[Any]) -> list[tuple[str, list[int]]]:
    """For every trained answer of a conversation: (the prompt Ollama serves before it, the
    training ids before the answer's first trained token)."""
    if getattr(template, "renders_ollama", False):
        from ftpack.training.ollama_format import served_turns

        return served_turns(template, tokenizer, messages)
    tt = trained_tokens(tokenizer, template, messages)
    starts = [i for i, m in enumerate(tt.train) if m and (i == 0 or not tt.train[i - 1])]
    answers = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    return [(template.inference_prompt(list(messages[:k])), tt.input_ids[:first])
            for k, first in zip(answers, starts)]


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def check_tokenization(tokenizer: Any, template: Any, conversations: Sequence[Any], vocab_gguf: Path, *,
                       sample: int = DEFAULT_SAMPLE, seed: int = 0, raise_on_mismatch: bool = True,
                       subject: str | None = None) -> TokenCheck:
    """Compare training ids with llama.cpp's ids for a sample of ``conversations``
    (``vocab_gguf``: any GGUF; only its vocabulary is loaded). ``subject`` names the two
    sides in the error (default: training and llama.cpp/Ollama)."""
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
                continue
            # every turn: the prompt Ollama serves before each trained answer, as llama.cpp
            # tokenizes it, is exactly what training puts before that answer
            for turn, (prompt, before) in enumerate(served_prompt_ids(tokenizer, template, messages), 1):
                served = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
                check.turns += 1
                pos = first_difference(before, served)
                if pos is not None:
                    check.mismatches.append({**_describe(i, pos, before, served, tokenizer), "turn": turn})
                    break
    if check.mismatches and raise_on_mismatch:
        m = check.mismatches[0]
        where = f", answer {m['turn']} (the prompt Ollama serves before it)" if m.get("turn") else ""
        raise FtpackError(
            f"Tokenization differs between {subject or 'training and llama.cpp/Ollama'} in {len(check.mismatches)} of "
            f"{check.checked} checked conversations. First: record {m['record']}{where}, token {m['position']}:\n"
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


# -- the collated batches the trainer receives ----------------------------------------------------

#: how many training rows the train stage collates and checks (all when there are fewer)
BATCH_SAMPLE = 64


@dataclass
class BatchCheck:
    """Rows of the trainer's own collated batches compared with the checked ids."""

    rows: int
    tokens: int  # unpadded tokens compared
    trained: int  # tokens whose label is set
    against: str  # what the ids were compared with

    def as_metrics(self) -> dict[str, Any]:
        return {"batch_check_rows": self.rows, "batch_check_tokens": self.tokens,
                "batch_check_trained_tokens": self.trained, "batch_check_against": self.against}


def check_collated_batches(trainer: Any, tokenizer: Any, template: Any, rows: Sequence[Any], *,
                           vocab_gguf: Path | None = None, max_length: int | None = None,
                           train_on_prompts: bool = False, sample: int = BATCH_SAMPLE) -> BatchCheck:
    """Collate the first ``sample`` rows of ``trainer.train_dataset`` with the trainer's own
    data collator — exactly the tensors a training step receives — and prove, row by row,
    that the unpadded ``input_ids`` are the ids the tokenization check compared (the template
    rendered and tokenized as :func:`trained_tokens` does; with ``vocab_gguf``, llama.cpp's
    ids of the text Ollama serves for the same conversation), and that the labels are set on
    exactly the trained positions, each equal to its input id. ``rows``: what the trainer's
    dataset was made from, in order (``{"messages": …}``, or an Ollama format's pre-tokenized
    rows). With packing (a row holds several conversations, ``position_ids`` restarting at
    each) every packed piece must be one of the rows. Raises :class:`FtpackError` naming the
    first differing row and position."""
    from contextlib import nullcontext

    import torch

    from ftpack.core.quiet import quiet_libraries
    from ftpack.inference.runtime import open_llama

    n = min(sample, len(trainer.train_dataset))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(n)])
    ids_t, labels_t = batch["input_ids"], batch["labels"]
    keep_t = batch.get("attention_mask")
    if keep_t is None:
        keep_t = torch.ones_like(ids_t)
    positions = batch.get("position_ids")
    packed = len(trainer.train_dataset) != len(rows) or (positions is not None and bool((positions[:, 1:] == 0).any()))
    pretokenized = bool(getattr(template, "renders_ollama", False))
    use_llama = vocab_gguf is not None and Path(vocab_gguf).is_file() and not pretokenized
    check = BatchCheck(rows=0, tokens=0, trained=0,
                       against=f"llama.cpp ({Path(vocab_gguf).name})" if use_llama else
                       ("the pre-tokenized rows" if pretokenized else "the checked training ids"))

    def fail(i: int, what: str, pos: int, ours: Sequence[int], want: Sequence[int]) -> None:
        detail = _describe(i, pos, ours, want, tokenizer)
        raise FtpackError(f"Training batch row {i}: {what} differ from the checked ones at token {pos}:\n"
                          f"  batch   : {detail['training']}\n  expected: {detail['llama_cpp']}\n"
                          f"  text near: {detail['text']!r}",
                          "The trainer would see other tokens than the ones checked against llama.cpp. Report this "
                          "with the base's name and the versions `ftpack doctor` shows.")

    with quiet_libraries(stderr=True), \
            (open_llama(Path(vocab_gguf), vocab_only=True) if use_llama else nullcontext()) as llm:

        def expected(i: int) -> tuple[list[int], list[int]]:
            if pretokenized:
                want_ids = list(rows[i]["input_ids"])
                want_mask = [1] * len(want_ids) if train_on_prompts else list(rows[i]["assistant_masks"])
            else:
                tt = trained_tokens(tokenizer, template, rows[i]["messages"], train_on_prompts=train_on_prompts)
                want_ids, want_mask = tt.input_ids, tt.train
            if llm is not None:
                theirs = llm.tokenize(inference_text(tokenizer, template, rows[i]["messages"]).encode("utf-8"),
                                      add_bos=True, special=True)
                if (pos := first_difference(want_ids, theirs)) is not None:
                    fail(i, "llama.cpp's ids", pos, want_ids, theirs)
            return (want_ids[:max_length], want_mask[:max_length]) if max_length else (want_ids, want_mask)

        pieces: list[tuple[int, list[int], list[int]]] = []  # (row, ids, labels) of each conversation seen
        for r in range(ids_t.shape[0]):  # padding-free packing collates everything into one row
            keep = keep_t[r].bool()
            ids, labels = ids_t[r][keep].tolist(), labels_t[r][keep].tolist()
            starts = [0]
            if packed and positions is not None:
                starts = [k for k, p in enumerate(positions[r][keep].tolist()) if p == 0] or [0]
            for a, b in zip(starts, [*starts[1:], len(ids)]):
                pieces.append((r, ids[a:b], labels[a:b]))
        if packed:  # a packed piece is some row: find it by its ids
            by_ids = {}
            for i in range(len(rows)):
                want_ids, want_mask = expected(i)
                by_ids.setdefault(tuple(want_ids), (i, want_ids, want_mask))
        for r, ids, labels in pieces:
            if packed:
                found = by_ids.get(tuple(ids))
                if found is None:
                    raise FtpackError(f"Training batch row {r}: a packed sequence of {len(ids)} tokens is none of "
                                      f"the checked conversations (starts {tokenizer.convert_ids_to_tokens(ids[:6])}).",
                                      "The trainer would see other tokens than the ones checked against llama.cpp. "
                                      "Report this with the base's name; --packing off avoids it.")
                _, want_ids, want_mask = found
            else:
                want_ids, want_mask = expected(r)
                if (pos := first_difference(ids, want_ids)) is not None:
                    fail(r, "input ids", pos, ids, want_ids)
            trained = [k for k, label in enumerate(labels) if label != -100]
            wanted = [k for k, m in enumerate(want_mask) if m]
            if trained != wanted or any(labels[k] != ids[k] for k in trained):
                pos = next((a for a, b in zip(trained, wanted) if a != b), min(len(trained), len(wanted)))
                raise FtpackError(f"Training batch row {r}: the loss is on {len(trained)} tokens, the trained "
                                  f"positions are {len(wanted)} (first difference near token {pos}).",
                                  "The model would learn from other tokens than its answers. Report this with "
                                  "the base's name and the versions `ftpack doctor` shows.")
            check.rows += 1
            check.tokens += len(ids)
            check.trained += len(trained)
    return check
