"""Real tokenizers for tests, from llama.cpp's own test vocabularies.

llama-cpp-python's source distribution ships ``models/ggml-vocab-*.gguf`` (vocab-only
GGUFs of real models) with ``.inp`` strings and the ``.out`` ids llama.cpp must produce
(ftpack.gguf.vendored fetches and caches them). From ``ggml-vocab-llama-spm.gguf`` —
Llama-2's vocabulary, scores and token types — we write the ``tokenizer.model`` Llama-2
and Vicuna ship, in a folder laid out like lmsys/vicuna-7b-v1.5's (``LlamaTokenizer``,
``legacy: false``, no ``tokenizer.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

SEPARATOR = "\n__ggml_vocab_test__\n"


#: How many cases each suite of the pinned llama-cpp-python sdist (0.3.36) holds: a suite that
#: lost cases (an empty or cut .inp file) fails here instead of passing with nothing compared.
SUITE_CASES = {"llama-spm": 46, "llama-bpe": 46, "qwen2": 46, "phi-3": 46, "gpt-2": 46, "starcoder": 46,
               "gemma-4": 46, "qwen35": 50}


def vocab_test(name: str) -> tuple[Path, list[str], list[list[int]]]:
    """(vocab gguf, input strings, expected ids) of llama.cpp's tokenizer test ``name``."""
    from ftpack.gguf.vendored import vendored_source

    vocab, inp, out = vendored_source().vocab_tests()[name]
    texts = inp.read_text(encoding="utf-8").split(SEPARATOR)
    if texts and texts[-1] == "":
        texts.pop()
    lines = out.read_text(encoding="utf-8").split("\n")
    expected = [[int(t) for t in line.split()] for line in lines[:len(texts)]]
    assert len(texts) == SUITE_CASES.get(name, len(texts)) and texts, (name, len(texts))
    assert len(expected) == len(texts) and sum(map(len, expected)) > len(texts), (name, "ids for the cases")
    return vocab, texts, expected


def _field(reader, name: str) -> list:
    f = reader.fields[name]
    return [f.parts[i] for i in f.data]


def write_llama2_spm_folder(out: Path) -> Path:
    """A Vicuna-v1.5-style tokenizer folder built from llama.cpp's Llama-2 test vocabulary."""
    import gguf
    from sentencepiece import sentencepiece_model_pb2 as pb

    vocab, _, _ = vocab_test("llama-spm")
    reader = gguf.GGUFReader(str(vocab))
    tokens = [bytes(t).decode("utf-8") for t in _field(reader, "tokenizer.ggml.tokens")]
    scores = [float(s[0]) for s in _field(reader, "tokenizer.ggml.scores")]
    types = [int(t[0]) for t in _field(reader, "tokenizer.ggml.token_type")]
    piece_type = pb.ModelProto.SentencePiece.Type
    # GGUF token types (llama.cpp's LLAMA_TOKEN_TYPE_*) -> SentencePiece piece types
    type_map = {1: piece_type.NORMAL, 2: piece_type.UNKNOWN, 3: piece_type.CONTROL,
                4: piece_type.USER_DEFINED, 5: piece_type.UNUSED, 6: piece_type.BYTE}
    model = pb.ModelProto()
    for tok, score, typ in zip(tokens, scores, types):
        piece = model.pieces.add()
        piece.piece, piece.score, piece.type = tok, score, type_map[typ]
    spec = model.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.vocab_size = len(tokens)
    spec.byte_fallback = True
    spec.split_digits = True
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = 0, 1, 2, -1
    norm = model.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = True
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(model.SerializeToString())
    # as lmsys/vicuna-7b-v1.5 ships it
    (out / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "pad_token": None, "clean_up_tokenization_spaces": False, "legacy": False,
        "model_max_length": 4096, "padding_side": "right", "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer"}, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}, indent=2))
    return out
