"""llama.cpp's own tokenizer suite against the tokenizer ftpack trains with for a GGUF base.

``--base file.gguf`` (and an Ollama model as base) is materialised by
ftpack.training.bases: ``save_gguf_tokenizer`` writes the tokenizer from the GGUF's
metadata (ftpack.training.gguf_tokenizer) beside the dequantized weights, and training
loads it with ``bases.load_tokenizer``; the tests call those very functions. llama.cpp
— so Ollama — tokenizes with the GGUF's vocabulary. For every vocabulary family ftpack
trains, llama-cpp-python's sdist ships ``models/ggml-vocab-<family>.gguf`` with ``.inp``
strings and the ``.out`` ids llama.cpp produces (llama.cpp itself reproduces them
exactly). The training tokenizer must give the same ids for every string, and add BOS
exactly when llama.cpp does.

transformers' own rebuild differs from llama.cpp per family (transformers 5.24,
llama-cpp-python 0.3.36): llama-spm 31/46 (a Metaspace pre-tokenizer drops SentencePiece's
dummy prefix before a leading space), llama-bpe 45/46 (no ``ignore_merges``: 'Cửa Việt';
no BOS; an extra <|endoftext|> after the 128,256 real tokens), starcoder/SmolLM 45/46 (no
digit split before ByteLevel: 'ied 4 ½ months'; a GPT2Tokenizer class also rebuilds the
pre-tokenizer on load, dropping a fix made in tokenizer.json). ftpack.training.gguf_tokenizer
corrects each from the GGUF's metadata. Measured with it: llama-spm, llama-bpe, qwen2,
phi-3, gpt-2, starcoder 46/46 each, BOS/EOS as llama.cpp adds them, as many tokens as the
GGUF has.

gemma-4: transformers cannot read its GGUF at all (StrictDataclassFieldValidationError on
num_key_value_heads, a per-layer list), so ftpack writes its tokenizer.json itself from the
GGUF's tokens and merges (46/46). The weights of such a GGUF still cannot be dequantized by
transformers: ftpack says so as an FtpackError with a hint instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import llama_cpp

from ftpack.core.errors import FtpackError
from ftpack.training.gguf_tokenizer import read_gguf_vocab

from llama_vocab import vocab_test
from tiny_archs import rebuild_gguf_tokenizer

FAMILIES = ["llama-spm", "llama-bpe", "qwen2", "phi-3", "gpt-2", "starcoder", "gemma-4"]
#: texts whose ids with special tokens (BOS/EOS) are compared with llama.cpp's
SPECIAL_TEXTS = ["Hi", " Hello world", "3 apples\n"]


def training_tokenizer_from_gguf(vocab: Path, folder: Path):
    """The tokenizer training uses for a GGUF base: rebuilt and saved as
    bases.materialise_gguf does, then loaded with bases.load_tokenizer."""
    from ftpack.training.bases import load_tokenizer

    return load_tokenizer(rebuild_gguf_tokenizer(vocab, folder))


def _llama_cpp_ids_with_specials(vocab: Path, texts: list[str]) -> list[list[int]]:
    """llama.cpp's ids with BOS/EOS added as the model says (llama_tokenize's add_special)."""
    llm = llama_cpp.Llama(str(vocab), vocab_only=True, verbose=False)
    try:
        return [llm.tokenize(t.encode(), add_bos=True, special=True) for t in texts]
    finally:
        llm.close()


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_gguf_base_tokenizer_gives_llama_cpp_ids(family, tmp_path):
    vocab, texts, expected = vocab_test(family)
    assert len(texts) == 46  # llama.cpp's suite for each of these families (tests/llama_vocab.py SUITE_CASES)
    tok = training_tokenizer_from_gguf(vocab, tmp_path / "tokenizer")
    wrong = [(text, tok.convert_ids_to_tokens(ours), tok.convert_ids_to_tokens(ids))
             for text, ids in zip(texts, expected)
             if (ours := tok(text, add_special_tokens=False).input_ids) != ids]
    assert not wrong, f"{len(texts) - len(wrong)}/{len(texts)} equal; first: {wrong[0]}"
    # BOS (and EOS) exactly when llama.cpp adds them, and never twice
    assert [tok(t).input_ids for t in SPECIAL_TEXTS] == _llama_cpp_ids_with_specials(vocab, SPECIAL_TEXTS)
    # one embedding row per token: no token beyond the GGUF's vocabulary
    assert len(tok) == len(read_gguf_vocab(vocab).tokens)


@pytest.mark.slow
def test_gguf_transformers_cannot_read_is_an_ftpack_error(tmp_path):
    """gemma-4's GGUF: its tokenizer is ftpack's own, but transformers' reader fails validating
    the model's config; the user gets a reason and what to do, not a traceback."""
    from ftpack.training.bases import materialise_gguf

    vocab, _, _ = vocab_test("gemma-4")
    folder = materialise_gguf(vocab, cache_dir=tmp_path, tokenizer_only=True)
    assert (folder / "tokenizer.json").is_file()
    with pytest.raises(FtpackError) as err:
        materialise_gguf(vocab, cache_dir=tmp_path)
    assert "transformers cannot load" in str(err.value) and "StrictDataclass" in str(err.value)
    assert "--base ORG/NAME" in (err.value.hint or "")
