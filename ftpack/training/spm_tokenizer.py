"""SentencePiece-BPE tokenizers (Llama-2, Vicuna, Mistral v0.1 …) built to tokenize like llama.cpp.

The models were trained with SentencePiece, and llama.cpp (so Ollama) tokenizes their
GGUF the SentencePiece way: the text gets one leading ``▁``, spaces become ``▁``, and BPE
merges are ranked by the *score* of the merged piece. transformers 5 rebuilds such a
folder (``tokenizer.model`` + ``LlamaTokenizer`` config, as Vicuna ships it) with a
Metaspace pre-tokenizer that splits at every space and ranks merges by id: runs of spaces,
a leading space and the word after ``</s>`` then come out differently (measured on
Vicuna's template: no conversation of the example data tokenized like llama.cpp).

:func:`spm_fast_tokenizer` builds the fast tokenizer directly from ``tokenizer.model``:
the legacy normalizer (prepend ``▁``, spaces to ``▁``), no pre-tokenizer, byte fallback,
and merges ordered by piece score, with control tokens matched before normalisation. It
reproduces llama.cpp's own tokenizer tests for Llama's vocabulary id for id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SPM_FILE = "tokenizer.model"
#: tokenizer classes whose folders are SentencePiece BPE with Llama's legacy behaviour.
LLAMA_SPM_CLASSES = ("LlamaTokenizer", "LlamaTokenizerFast", "CodeLlamaTokenizer", "CodeLlamaTokenizerFast")
_SPACE = "\u2581"  # ▁


def is_llama_spm_folder(folder: Path) -> bool:
    """True for a folder whose tokenizer is Llama-style SentencePiece BPE (``tokenizer.model``,
    a Llama tokenizer class, byte fallback), the case transformers 5 rebuilds differently."""
    folder = Path(folder)
    if not (folder / SPM_FILE).is_file():
        return False
    cfg = _read_json(folder / "tokenizer_config.json")
    if cfg.get("tokenizer_class") not in LLAMA_SPM_CLASSES:
        return False
    proto = load_spm_proto(folder / SPM_FILE)
    return proto.trainer_spec.model_type == 2 and proto.trainer_spec.byte_fallback  # 2 = BPE


def keep_spm_model(base: Path, saved: Path) -> None:
    """Keep what the GGUF converters read beside a tokenizer that training saved.

    transformers 5's ``save_pretrained`` writes tokenizer.json and a tokenizer_config.json
    without ``added_tokens_decoder``, and no tokenizer.model. The converters (ftpack's and
    llama.cpp's) read SentencePiece pieces, scores and types from tokenizer.model, and
    llama.cpp's reads which tokens are special (Gemma's ``<start_of_turn>``, Phi-3's
    ``<|user|>``) only from ``added_tokens_decoder``: without them the GGUF's tokenizer is
    not the one training used. So the base's tokenizer.model is copied, and
    ``added_tokens_decoder`` is written from tokenizer.json's ``added_tokens``.
    """
    import shutil

    base, saved = Path(base), Path(saved)
    if (base / SPM_FILE).is_file() and not (saved / SPM_FILE).is_file():
        shutil.copy2(base / SPM_FILE, saved / SPM_FILE)
    config_path, tokenizer_json = saved / "tokenizer_config.json", saved / "tokenizer.json"
    config = _read_json(config_path)
    if config and "added_tokens_decoder" not in config and tokenizer_json.is_file():
        added = _read_json(tokenizer_json).get("added_tokens") or []
        config["added_tokens_decoder"] = {
            str(t["id"]): {k: t.get(k, False) for k in ("content", "lstrip", "normalized", "rstrip", "single_word",
                                                         "special")} for t in added}
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def load_spm_proto(path: Path):
    """The parsed SentencePiece ``ModelProto`` (needs protobuf, a dependency of ftpack)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(Path(path).read_bytes())
    return proto


def score_ranked_merges(proto) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) with merges ranked as SentencePiece BPE ranks them: by the score of
    the merged piece (higher first), then by id. Only normal pieces are merge results."""
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    ranked = []
    for pid, p in enumerate(proto.pieces):
        if p.type != 1:  # NORMAL
            continue
        piece = p.piece
        for k in range(1, len(piece)):
            a, b = piece[:k], piece[k:]
            if a in vocab and b in vocab:
                ranked.append((-p.score, pid, vocab[a], vocab[b], a, b))
    ranked.sort()
    return vocab, [(a, b) for *_, a, b in ranked]


def spm_fast_tokenizer(folder: Path):
    """A ``PreTrainedTokenizerFast`` for a Llama-style SentencePiece folder that tokenizes
    exactly like SentencePiece and llama.cpp (BOS added, EOS not, as the config says)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    proto = load_spm_proto(folder / SPM_FILE)
    cfg = _read_json(folder / "tokenizer_config.json")
    vocab, merges = score_ranked_merges(proto)
    spec = proto.trainer_spec
    unk = proto.pieces[spec.unk_id].piece if spec.unk_id >= 0 else None
    bos = proto.pieces[spec.bos_id].piece if spec.bos_id >= 0 else None
    eos = proto.pieces[spec.eos_id].piece if spec.eos_id >= 0 else None

    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    norm = [normalizers.Replace(" ", _SPACE)]
    if proto.normalizer_spec.add_dummy_prefix:
        norm.insert(0, normalizers.Prepend(_SPACE))
    tk.normalizer = normalizers.Sequence(norm)
    dec = [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if proto.normalizer_spec.add_dummy_prefix:
        dec.append(decoders.Strip(" ", 1, 0))
    tk.decoder = decoders.Sequence(dec)
    # control (3) and user-defined (4) pieces are matched in the raw text, like llama.cpp
    # does with special=True; unknown (2) too, so "<unk>" typed in text stays one token.
    tk.add_special_tokens([AddedToken(p.piece, normalized=False, special=p.type in (2, 3))
                           for p in proto.pieces if p.type in (2, 3, 4)])
    add_bos = bool(cfg.get("add_bos_token", True)) and bos is not None
    add_eos = bool(cfg.get("add_eos_token", False)) and eos is not None
    single = " ".join([*([bos] if add_bos else []), "$A", *([eos] if add_eos else [])])
    pair = " ".join([*([bos] if add_bos else []), "$A", *([eos] if add_eos else []),
                     *([bos] if add_bos else []), "$B", *([eos] if add_eos else [])])
    special = [(t, vocab[t]) for t in {bos if add_bos else None, eos if add_eos else None} if t]
    tk.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)

    # tokens the folder adds after the SentencePiece pieces (Phi-3's <|user|> … at 32000+)
    extra = sorted((int(i), d) for i, d in (cfg.get("added_tokens_decoder") or {}).items() if int(i) >= len(vocab))
    for expected_id, (token_id, d) in enumerate(extra, start=len(vocab)):
        if token_id != expected_id:
            raise ValueError(f"added token {d.get('content')!r} has id {token_id}, expected {expected_id}")
        tk.add_tokens([AddedToken(d["content"], single_word=d.get("single_word", False), lstrip=d.get("lstrip", False),
                                  rstrip=d.get("rstrip", False), normalized=d.get("normalized", False),
                                  special=d.get("special", False))])

    kwargs = {k: cfg[k] for k in ("model_max_length", "padding_side", "chat_template") if cfg.get(k) is not None}
    pad = cfg.get("pad_token")
    if isinstance(pad, dict):
        pad = pad.get("content")
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=bos, eos_token=eos, unk_token=unk,
                                   pad_token=pad, add_bos_token=add_bos, add_eos_token=add_eos,
                                   clean_up_tokenization_spaces=False, **kwargs)
