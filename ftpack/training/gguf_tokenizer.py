"""The training tokenizer of a GGUF base, made to tokenize exactly as llama.cpp does.

``--base file.gguf`` and ``--base ollama:NAME`` train on a model whose tokenizer exists
only as GGUF metadata (``tokenizer.ggml.*``). llama.cpp — so Ollama — tokenizes with that
metadata; training must produce the same ids, or the model learns on text it will never
see. transformers can rebuild a tokenizer from a GGUF (``gguf_file=``), but measured
against llama.cpp's own tokenizer suite (tests/test_gguf_tokenizers.py) the rebuild
differs per family, each in one component:

- SentencePiece vocabularies (``tokenizer.ggml.model == "llama"``: Llama 2, Vicuna,
  Mistral v0.1, Phi-3): a Metaspace pre-tokenizer that drops the dummy prefix before a
  leading space. We write the vocabulary as a ``tokenizer.model`` (pieces, scores, types)
  in a Llama-style folder, which :func:`ftpack.training.bases.load_tokenizer` builds with
  :mod:`ftpack.training.spm_tokenizer` — the same builder as for Vicuna's folder.
- byte-level BPE (``"gpt2"``): no ``ignore_merges`` for the pre-tokenizers llama.cpp sets
  it for (Llama 3), no digit split where llama.cpp's regex splits every digit first
  (StarCoder, SmolLM), BOS added or not regardless of llama.cpp, and tokens appended
  beyond the GGUF's vocabulary. :func:`adjust_bpe_tokenizer` fixes those in the saved
  tokenizer.json / tokenizer_config.json.
- Gemma 4 (``"gemma4"``): SentencePiece-style BPE — spaces become ``▁``, merges run on raw
  UTF-8 with byte fallback (llama.cpp's LLAMA_VOCAB_PRE_TYPE_GEMMA4). transformers cannot
  read this GGUF at all (its config reader rejects the per-layer head counts), so
  :func:`gemma4_tokenizer_json` writes the tokenizer.json from the GGUF's tokens and
  merges directly; measured against llama.cpp's suite (ggml-vocab-gemma-4) it gives the
  same ids for every string.

Every decision reads the GGUF's metadata (``tokenizer.ggml.model``, ``tokenizer.ggml.pre``,
``add_bos_token`` …), never its file name; the rules are llama.cpp's (src/llama-vocab.cpp,
``llama_vocab::impl::load``, in the sdist ftpack vendors).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Bump when the tokenizer written for a GGUF changes: cached materialisations refresh it
#: (1, unrecorded: transformers' rebuild as it came; 2: these rules; 3: Gemma 4 written directly).
GGUF_TOKENIZER_VERSION = 3

#: ``tokenizer.ggml.pre`` values for which llama.cpp sets ``ignore_merges`` (a pre-token that
#: is itself a vocabulary entry is one token, whatever the merges say).
IGNORE_MERGES_PRES = frozenset({"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
                                "lfm2", "jina-v5-nano", "minicpm5", "youtu", "glm4", "glm5", "tekken"})
#: pre-tokenizers whose first llama.cpp regex is ``\p{N}`` before GPT-2's: every digit on its own
#: (LLAMA_VOCAB_PRE_TYPE_STARCODER, _REFACT, _COMMAND_R, _SMOLLM, _CODESHELL, _EXAONE, _MINERVA, _MELLUM2).
DIGIT_SPLIT_PRES = frozenset({"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b",
                              "mellum2"})
#: BPE pre-tokenizers for which llama.cpp adds BOS when the GGUF does not say (add_bos_token).
BOS_BY_DEFAULT_PRES = frozenset({"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
                                 "lfm2", "jina-v5-nano", "tekken", "chameleon"})
#: llama.cpp token types (LLAMA_TOKEN_TYPE_*) -> SentencePiece piece types; same numbers but 0.
_SPM_PIECE_TYPE = {0: 1, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6}
_BYTE = 6


@dataclass(frozen=True)
class GgufVocab:
    """What a GGUF says about its tokenizer (the ``tokenizer.*`` metadata llama.cpp reads)."""

    model: str  # tokenizer.ggml.model: "llama" (SentencePiece), "gpt2" (byte-level BPE), …
    pre: str | None  # tokenizer.ggml.pre
    tokens: list[str]
    scores: list[float] | None
    types: list[int] | None
    special_ids: dict[str, int] = field(default_factory=dict)  # "bos" -> id, "eos", "unk", "pad"
    add_bos: bool | None = None  # tokenizer.ggml.add_bos_token, when the GGUF has it
    add_eos: bool | None = None
    add_space_prefix: bool | None = None
    chat_template: str | None = None

    def special(self, kind: str) -> str | None:
        i = self.special_ids.get(kind)
        return self.tokens[i] if i is not None and 0 <= i < len(self.tokens) else None


_VOCAB_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")


def _header(gguf_path: Path, arrays: tuple[str, ...]) -> Any:
    """The GGUF's header with ``arrays`` read (ftpack's fast reader); ``ValueError`` for a file
    that is not a readable GGUF, as gguf-py raises (the callers turn it into the user's error)."""
    from ftpack.core.errors import FtpackError
    from ftpack.gguf.header import read_gguf_header

    try:
        return read_gguf_header(gguf_path, arrays=arrays)
    except FtpackError as exc:
        raise ValueError(exc.message) from None


def read_gguf_vocab(gguf_path: Path) -> GgufVocab:
    """The tokenizer metadata of a GGUF file (reads the header only, not the tensors)."""
    header = _header(gguf_path, _VOCAB_ARRAYS)

    def get(key: str) -> Any:
        return header.value(f"tokenizer.{key}")

    special = {kind: int(v) for kind in ("bos", "eos", "unknown", "padding")
               if (v := get(f"ggml.{kind}_token_id")) is not None}
    special = {{"unknown": "unk", "padding": "pad"}.get(k, k): v for k, v in special.items()}
    add = {k: (None if (v := get(f"ggml.{k}")) is None else bool(v))
           for k in ("add_bos_token", "add_eos_token", "add_space_prefix")}
    scores, types = get("ggml.scores"), get("ggml.token_type")
    return GgufVocab(model=get("ggml.model") or "", pre=get("ggml.pre"), tokens=get("ggml.tokens") or [],
                     scores=None if scores is None else [float(x) for x in scores],
                     types=None if types is None else [int(x) for x in types], special_ids=special,
                     add_bos=add["add_bos_token"], add_eos=add["add_eos_token"],
                     add_space_prefix=add["add_space_prefix"], chat_template=get("chat_template"))


def llama_cpp_adds_bos(vocab: GgufVocab) -> bool:
    """Whether llama.cpp puts BOS before the text: the GGUF's flag, else its default per tokenizer."""
    if vocab.add_bos is not None:
        return vocab.add_bos and "bos" in vocab.special_ids
    if vocab.model == "llama":
        return "bos" in vocab.special_ids
    return vocab.model == "gpt2" and (vocab.pre or "") in BOS_BY_DEFAULT_PRES and "bos" in vocab.special_ids


def llama_cpp_adds_eos(vocab: GgufVocab) -> bool:
    """Whether llama.cpp appends EOS to the text (only when the GGUF says so, for these families)."""
    return bool(vocab.add_eos) and "eos" in vocab.special_ids


def is_spm_vocab(vocab: GgufVocab) -> bool:
    """A SentencePiece-BPE vocabulary with byte fallback, which the SPM builder reproduces."""
    return vocab.model == "llama" and bool(vocab.types) and _BYTE in vocab.types


# -- SentencePiece ("llama") vocabularies --------------------------------------------------

def write_spm_folder(vocab: GgufVocab, out_dir: Path) -> Path:
    """A Llama-style tokenizer folder (``tokenizer.model`` + ``LlamaTokenizer`` config) holding
    the GGUF's pieces, scores and types, so :func:`ftpack.training.bases.load_tokenizer`
    builds it with :func:`ftpack.training.spm_tokenizer.spm_fast_tokenizer`, and the
    converters read the same pieces back when the trained model is converted."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.model").write_bytes(spm_model_proto(vocab).SerializeToString())
    specials = {k: vocab.special(k) for k in ("bos", "eos", "unk", "pad")}
    config = spm_tokenizer_config(vocab)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps({f"{k}_token": v for k, v in specials.items() if v is not None}, indent=2, ensure_ascii=False),
        encoding="utf-8")
    return out_dir


def spm_model_proto(vocab: GgufVocab):
    """A SentencePiece ``ModelProto`` (BPE, byte fallback) from the GGUF's tokens/scores/types."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    model = pb.ModelProto()
    scores = vocab.scores or [0.0] * len(vocab.tokens)
    types = vocab.types or [1] * len(vocab.tokens)
    for tok, score, typ in zip(vocab.tokens, scores, types):
        piece = model.pieces.add()
        piece.piece, piece.score, piece.type = tok, float(score), _SPM_PIECE_TYPE.get(int(typ), 1)
    spec = model.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.vocab_size = len(vocab.tokens)
    spec.byte_fallback = _BYTE in types
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = (vocab.special_ids.get(k, -1)
                                                          for k in ("unk", "bos", "eos", "pad"))
    norm = model.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = vocab.add_space_prefix is not False  # llama.cpp's default for SPM: True
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    return model


def spm_tokenizer_config(vocab: GgufVocab) -> dict[str, Any]:
    """tokenizer_config.json for :func:`write_spm_folder`: llama.cpp's BOS/EOS behaviour, the
    special flags of control tokens (the converters read them from ``added_tokens_decoder``)."""
    types = vocab.types or []
    decoder = {str(i): {"content": vocab.tokens[i], "lstrip": False, "normalized": False, "rstrip": False,
                        "single_word": False, "special": t in (2, 3)}
               for i, t in enumerate(types) if t in (2, 3, 4)}
    config: dict[str, Any] = {
        "tokenizer_class": "LlamaTokenizer", "legacy": True, "clean_up_tokenization_spaces": False,
        "add_bos_token": llama_cpp_adds_bos(vocab), "add_eos_token": llama_cpp_adds_eos(vocab),
        **{f"{k}_token": vocab.special(k) for k in ("bos", "eos", "unk", "pad")},
        "added_tokens_decoder": decoder}
    if vocab.chat_template:
        config["chat_template"] = vocab.chat_template
    return config


# -- byte-level BPE ("gpt2") vocabularies --------------------------------------------------

def adjust_bpe_tokenizer(tokenizer_json: dict[str, Any], tokenizer_config: dict[str, Any],
                         vocab: GgufVocab) -> tuple[dict[str, Any], dict[str, Any]]:
    """transformers' rebuild of a BPE GGUF (tokenizer.json, tokenizer_config.json dicts) made to
    tokenize as llama.cpp does with the same GGUF; returns new dicts, the inputs stay as they were."""
    tj = json.loads(json.dumps(tokenizer_json))
    cfg = dict(tokenizer_config)
    pre = vocab.pre or ""
    if pre in IGNORE_MERGES_PRES:
        tj["model"]["ignore_merges"] = True
    if pre in DIGIT_SPLIT_PRES:
        tj["pre_tokenizer"] = _digits_first(tj.get("pre_tokenizer"))
    n = len(vocab.tokens)
    tj["added_tokens"] = [t for t in tj.get("added_tokens") or [] if t["id"] < n]
    kept = {t["content"] for t in tj["added_tokens"]} | set(tj["model"].get("vocab") or {})
    for kind in ("bos", "eos", "unk", "pad"):  # only tokens of the GGUF; its own special ids win
        current = cfg.get(f"{kind}_token")
        current = current.get("content") if isinstance(current, dict) else current
        if vocab.special(kind) is not None:
            cfg[f"{kind}_token"] = vocab.special(kind)
        elif current not in kept:
            cfg[f"{kind}_token"] = None
    add_bos, add_eos = llama_cpp_adds_bos(vocab), llama_cpp_adds_eos(vocab)
    cfg["add_bos_token"], cfg["add_eos_token"] = add_bos, add_eos
    # a model-specific class (GPT2Tokenizer, Qwen2Tokenizer) rebuilds its pre-tokenizer on
    # load and would drop the fixes above; the generic one loads tokenizer.json as written.
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    tj["post_processor"] = _template_processing(vocab, add_bos, add_eos)
    return tj, cfg


def _digits_first(pre_tokenizer: dict[str, Any] | None) -> dict[str, Any] | None:
    """Digits(individual_digits=True) before the existing pre-tokenizer (idempotent)."""
    digits = {"type": "Digits", "individual_digits": True}
    if pre_tokenizer is None:
        return digits
    steps = pre_tokenizer["pretokenizers"] if pre_tokenizer.get("type") == "Sequence" else [pre_tokenizer]
    if steps and steps[0] == digits:
        return pre_tokenizer
    return {"type": "Sequence", "pretokenizers": [digits, *steps]}


def _template_processing(vocab: GgufVocab, add_bos: bool, add_eos: bool) -> dict[str, Any]:
    """A TemplateProcessing post-processor adding BOS/EOS exactly as llama.cpp does."""
    bos, eos = vocab.special("bos"), vocab.special("eos")

    def seq(name: str, type_id: int) -> list[dict[str, Any]]:
        return ([{"SpecialToken": {"id": bos, "type_id": type_id}}] if add_bos else []) + \
            [{"Sequence": {"id": name, "type_id": type_id}}] + \
            ([{"SpecialToken": {"id": eos, "type_id": type_id}}] if add_eos else [])

    special = {t: {"id": t, "ids": [vocab.special_ids[k]], "tokens": [t]}
               for k, t, on in (("bos", bos, add_bos), ("eos", eos, add_eos)) if on}
    return {"type": "TemplateProcessing", "single": seq("A", 0), "pair": seq("A", 0) + seq("B", 1),
            "special_tokens": special}


# -- Gemma 4 ("gemma4") vocabularies ---------------------------------------------------------

def read_gguf_merges(gguf_path: Path) -> list[tuple[str, str]]:
    """``tokenizer.ggml.merges`` as pairs, split as llama.cpp splits them (at the first space
    after the first character, llama_vocab::impl::load)."""
    key = "tokenizer.ggml.merges"
    pairs = []
    for merge in _header(gguf_path, (key,)).value(key) or []:
        pos = merge.find(" ", 1)
        pairs.append((merge[:pos], merge[pos + 1:]) if pos > 0 else (merge, ""))
    return pairs


def gemma4_tokenizer_json(vocab: GgufVocab, merges: list[tuple[str, str]]) -> dict[str, Any]:
    """Gemma 4's tokenizer.json from its GGUF: BPE with byte fallback over the whole text,
    ``" "`` → ``"▁"`` before, the reverse after; control tokens (type 3) are special added
    tokens and user-defined ones (type 4: ``<|channel>``, ``<|tool_call>``…) plain added
    tokens, both matched whole as llama.cpp matches them; BOS added as llama.cpp adds it."""
    types = vocab.types or [1] * len(vocab.tokens)
    added = [{"id": i, "content": vocab.tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": t == 3} for i, t in enumerate(types) if t in (3, 4)]
    space, piece = " ", "\u2581"
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": space}, "content": piece},
        "pre_tokenizer": None,
        "post_processor": _template_processing(vocab, llama_cpp_adds_bos(vocab), llama_cpp_adds_eos(vocab)),
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": piece}, "content": space},
            {"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": vocab.special("unk"), "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(vocab.tokens)}, "merges": [list(m) for m in merges]}}


def gemma4_tokenizer_config(vocab: GgufVocab) -> dict[str, Any]:
    """tokenizer_config.json for :func:`gemma4_tokenizer_json`: the special tokens, the other
    control tokens as extra specials (llama.cpp's converter marks the model's special tokens
    CONTROL from these), BOS/EOS as llama.cpp adds them, the chat template."""
    types = vocab.types or []
    named = {vocab.special(k) for k in ("bos", "eos", "unk", "pad")}
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
        "add_bos_token": llama_cpp_adds_bos(vocab), "add_eos_token": llama_cpp_adds_eos(vocab),
        **{f"{k}_token": vocab.special(k) for k in ("bos", "eos", "unk", "pad")},
        "extra_special_tokens": [vocab.tokens[i] for i, t in enumerate(types) if t == 3 and vocab.tokens[i] not in named]}
    if vocab.chat_template:
        config["chat_template"] = vocab.chat_template
    return config


def write_gemma4_folder(vocab: GgufVocab, merges: list[tuple[str, str]], out_dir: Path) -> Path:
    """A tokenizer folder (tokenizer.json + tokenizer_config.json) for a Gemma 4 GGUF."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.json").write_text(json.dumps(gemma4_tokenizer_json(vocab, merges), ensure_ascii=False),
                                            encoding="utf-8")
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(gemma4_tokenizer_config(vocab), indent=2, ensure_ascii=False), encoding="utf-8")
    return out_dir


# -- the folder ----------------------------------------------------------------------------

def write_gguf_tokenizer(gguf_path: Path, out_dir: Path) -> GgufVocab:
    """Save the training tokenizer of a GGUF (and its chat template) into ``out_dir``;
    return the GGUF's tokenizer metadata.

    SentencePiece vocabularies are written as a ``tokenizer.model`` folder, Gemma 4's as a
    tokenizer.json made here; others are rebuilt by transformers and, for byte-level BPE, adjusted to llama.cpp's behaviour.
    Raises ``ValueError`` (and what transformers raises) when the GGUF cannot be read.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    vocab = read_gguf_vocab(gguf_path)
    if not vocab.tokens:
        raise ValueError("the GGUF has no tokenizer.ggml.tokens")
    if is_spm_vocab(vocab):
        write_spm_folder(vocab, out_dir)
        return vocab
    if vocab.model == "gemma4":
        write_gemma4_folder(vocab, read_gguf_merges(gguf_path), out_dir)
        return vocab
    from transformers import AutoTokenizer

    from ftpack.core.quiet import quiet_libraries

    with quiet_libraries(stderr=True):
        AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name).save_pretrained(out_dir)
    if vocab.model == "gpt2":
        tj_path, cfg_path = out_dir / "tokenizer.json", out_dir / "tokenizer_config.json"
        tj, cfg = adjust_bpe_tokenizer(json.loads(tj_path.read_text(encoding="utf-8")),
                                       json.loads(cfg_path.read_text(encoding="utf-8")), vocab)
        tj_path.write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
        cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")
    return vocab
