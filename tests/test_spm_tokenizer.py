"""Llama-2 / Vicuna SentencePiece tokenizers tokenize exactly like llama.cpp (so Ollama)."""

from __future__ import annotations

import pytest

from ftpack.training.spm_tokenizer import is_llama_spm_folder, spm_fast_tokenizer
from llama_vocab import vocab_test, write_llama2_spm_folder

# Text where transformers 5's rebuilt LlamaTokenizer and llama.cpp were seen to differ.
HARD_STRINGS = [
    "  leading spaces", " one leading space", "a  double  space", "\n    indented code\n\tx = 1",
    "A chat between a curious user and an artificial intelligence assistant. USER: Hi ASSISTANT: Hello!</s>USER: "
    "and then?</s> USER: again ASSISTANT:", "</s>USER: hi</s> USER:", " </s>  x", "12345 678.9 ½ 3,000",
    "tabs\tand\u00a0nbsp", "emoji 🦙 and 中文", "<s> typed BOS text", "end with space ",
]


@pytest.fixture(scope="module")
def vicuna_tokenizer_dir(tmp_path_factory):
    return write_llama2_spm_folder(tmp_path_factory.mktemp("vicuna-tokenizer"))


@pytest.fixture(scope="module")
def llama_cpp_vocab():
    from llama_cpp import Llama

    vocab, _, _ = vocab_test("llama-spm")
    llm = Llama(str(vocab), vocab_only=True, verbose=False)
    yield llm
    llm.close()


def test_the_fixture_is_llama2s_real_tokenizer(vicuna_tokenizer_dir):
    """SentencePiece itself, on the written tokenizer.model, gives llama.cpp's expected ids."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(vicuna_tokenizer_dir / "tokenizer.model"))
    _, texts, expected = vocab_test("llama-spm")
    assert [sp.encode(t) for t in texts] == [e for e in expected]


def test_detects_vicuna_style_folders(vicuna_tokenizer_dir, tiny_llama):
    assert is_llama_spm_folder(vicuna_tokenizer_dir)
    assert not is_llama_spm_folder(tiny_llama)  # BPE tokenizer.json, no tokenizer.model


def test_llama_cpp_tokenizer_suite(vicuna_tokenizer_dir):
    """llama.cpp's own test strings for Llama's vocabulary (the .out ids carry no BOS): every id equal."""
    tok = spm_fast_tokenizer(vicuna_tokenizer_dir)
    _, texts, expected = vocab_test("llama-spm")
    got = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    mismatches = [(t, g, e) for t, g, e in zip(texts, got, expected) if g != e]
    assert not mismatches, mismatches[:3]
    assert len(texts) >= 40


def test_equals_llama_cpp_with_bos_and_specials(vicuna_tokenizer_dir, llama_cpp_vocab):
    tok = spm_fast_tokenizer(vicuna_tokenizer_dir)
    for text in HARD_STRINGS:
        ours = tok(text)["input_ids"]
        theirs = llama_cpp_vocab.tokenize(text.encode(), add_bos=True, special=True)
        assert ours == theirs, (text, tok.convert_ids_to_tokens(ours), tok.convert_ids_to_tokens(theirs))
        assert ours.count(1) == 1 + text.count("<s>")  # BOS exactly once (plus typed ones)


def test_transformers_default_differs_so_the_fix_matters(vicuna_tokenizer_dir, llama_cpp_vocab):
    """The plain AutoTokenizer load of the same folder tokenizes some of these strings differently."""
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(vicuna_tokenizer_dir)
    differ = [t for t in HARD_STRINGS
              if auto(t)["input_ids"] != llama_cpp_vocab.tokenize(t.encode(), add_bos=True, special=True)]
    assert differ  # if transformers ever fixes this, the special path can go


def test_saved_tokenizer_reloads_identically(vicuna_tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    from ftpack.training.bases import load_tokenizer
    from ftpack.training.spm_tokenizer import keep_spm_model

    tok = load_tokenizer(vicuna_tokenizer_dir)  # what training loads
    tok.save_pretrained(tmp_path / "saved")
    keep_spm_model(vicuna_tokenizer_dir, tmp_path / "saved")  # what training saves beside it
    assert (tmp_path / "saved" / "tokenizer.model").read_bytes() == (vicuna_tokenizer_dir / "tokenizer.model").read_bytes()
    for again in (AutoTokenizer.from_pretrained(tmp_path / "saved"), load_tokenizer(tmp_path / "saved")):
        for text in HARD_STRINGS:
            assert again(text)["input_ids"] == tok(text)["input_ids"], text
    again = AutoTokenizer.from_pretrained(tmp_path / "saved")
    for text in HARD_STRINGS:
        assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert tok.decode(tok("Hello  world")["input_ids"], skip_special_tokens=True) == "Hello  world"
