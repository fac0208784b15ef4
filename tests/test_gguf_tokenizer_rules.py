"""The rules ftpack.training.gguf_tokenizer takes from llama.cpp, on small hand-made inputs.

The whole path is proven against llama.cpp's own tokenizer suite in
tests/test_gguf_tokenizers.py (slow); here each rule is checked on its own, fast: which
pre-tokenizer gets ``ignore_merges`` or a digit split, when BOS/EOS are added, that no
token beyond the GGUF's vocabulary survives, and that a cached GGUF materialisation with
an older tokenizer gets today's.
"""

from __future__ import annotations

import json

import pytest

from ftpack.training.gguf_tokenizer import (GgufVocab, adjust_bpe_tokenizer, llama_cpp_adds_bos, llama_cpp_adds_eos,
                                            spm_model_proto, spm_tokenizer_config)


def _bpe_vocab(pre: str | None, **kw) -> GgufVocab:
    tokens = ["<s>", "</s>", "a", "b", "ab", "1", "2"]
    kw.setdefault("special_ids", {"bos": 0, "eos": 1})
    return GgufVocab(model="gpt2", pre=pre, tokens=tokens, scores=None, types=[3, 3, 1, 1, 1, 1, 1], **kw)


def _rebuilt_json() -> tuple[dict, dict]:
    """What transformers' GGUF rebuild saves for a byte-level BPE vocabulary: ByteLevel
    pre-tokenizer, no BOS, merges used even for vocabulary words, an <|endoftext|> appended."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors

    vocab = {"<s>": 0, "</s>": 1, "a": 2, "b": 3, "ab": 4, "1": 5, "2": 6}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B", special_tokens=[])
    tok.add_special_tokens([AddedToken("<s>"), AddedToken("</s>"), AddedToken("<|endoftext|>")])
    cfg = {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<|endoftext|>"}
    return json.loads(tok.to_str()), cfg


@pytest.mark.parametrize("pre, ignore", [("llama-bpe", True), ("llama3", True), ("tekken", True),
                                         ("qwen2", False), ("smollm", False), ("gpt-2", False)])
def test_ignore_merges_exactly_for_llama_cpp_s_pre_tokenizers(pre, ignore):
    tj, cfg = _rebuilt_json()
    out, _ = adjust_bpe_tokenizer(tj, cfg, _bpe_vocab(pre))
    assert out["model"]["ignore_merges"] is ignore
    assert tj["model"]["ignore_merges"] is False  # the input is not modified


@pytest.mark.parametrize("pre, split", [("starcoder", True), ("smollm", True), ("refact", True),
                                        ("gpt-2", False), ("llama-bpe", False), ("qwen2", False)])
def test_digits_split_before_byte_level_for_starcoder_style_regexes(pre, split):
    tj, cfg = _rebuilt_json()
    out, out_cfg = adjust_bpe_tokenizer(tj, cfg, _bpe_vocab(pre))
    steps = out["pre_tokenizer"].get("pretokenizers") or [out["pre_tokenizer"]]
    assert (steps[0] == {"type": "Digits", "individual_digits": True}) is split
    assert steps[-1]["type"] == "ByteLevel"
    # the generic class loads tokenizer.json as written (GPT2Tokenizer rebuilds the pre-tokenizer)
    assert out_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    again, _ = adjust_bpe_tokenizer(out, out_cfg, _bpe_vocab(pre))
    assert again["pre_tokenizer"] == out["pre_tokenizer"]  # idempotent


def test_the_result_tokenizes_digits_one_by_one():
    from tokenizers import Tokenizer

    tj, cfg = _rebuilt_json()
    out, _ = adjust_bpe_tokenizer(tj, cfg, _bpe_vocab("smollm"))
    tok = Tokenizer.from_str(json.dumps(out))
    assert tok.pre_tokenizer.pre_tokenize_str("ab12") == [("ab", (0, 2)), ("1", (2, 3)), ("2", (3, 4))]


@pytest.mark.parametrize("vocab, bos", [
    (_bpe_vocab("llama-bpe"), True),  # llama.cpp's default for the llama3 pre-tokenizer
    (_bpe_vocab("llama-bpe", add_bos=False), False),  # the GGUF's flag wins
    (_bpe_vocab("qwen2"), False),
    (_bpe_vocab("smollm", add_bos=True), True),
    (GgufVocab(model="llama", pre="default", tokens=["<unk>", "<s>"], scores=None, types=[2, 3],
               special_ids={"unk": 0, "bos": 1}), True),  # SentencePiece: BOS unless told otherwise
    (_bpe_vocab("llama-bpe", special_ids={"eos": 1}), False),  # no BOS token, nothing to add
])
def test_bos_is_added_when_llama_cpp_adds_it(vocab, bos):
    assert llama_cpp_adds_bos(vocab) is bos
    tj, cfg = _rebuilt_json()
    out, out_cfg = adjust_bpe_tokenizer(tj, cfg, vocab)
    assert out_cfg["add_bos_token"] is bos
    first = out["post_processor"]["single"][0]
    assert ("SpecialToken" in first) is bos


def test_eos_only_when_the_gguf_says_so():
    assert not llama_cpp_adds_eos(_bpe_vocab("llama-bpe"))
    vocab = _bpe_vocab("gpt-2", add_eos=True)
    assert llama_cpp_adds_eos(vocab)
    tj, cfg = _rebuilt_json()
    out, _ = adjust_bpe_tokenizer(tj, cfg, vocab)
    assert out["post_processor"]["single"][-1] == {"SpecialToken": {"id": "</s>", "type_id": 0}}
    assert out["post_processor"]["special_tokens"]["</s>"]["ids"] == [1]


def test_no_token_beyond_the_gguf_vocabulary():
    """transformers' rebuild appends <|endoftext|> (Llama 3: id 128256) and names it unk;
    the model has no embedding row for it."""
    tj, cfg = _rebuilt_json()
    out, out_cfg = adjust_bpe_tokenizer(tj, cfg, _bpe_vocab("llama-bpe"))
    assert [t["id"] for t in out["added_tokens"]] == [0, 1]
    assert out_cfg["unk_token"] is None
    assert (out_cfg["bos_token"], out_cfg["eos_token"]) == ("<s>", "</s>")


def test_spm_folder_keeps_the_gguf_pieces_and_flags():
    tokens = ["<unk>", "<s>", "</s>", "<0x41>", "\u2581a", "<|user|>"]
    vocab = GgufVocab(model="llama", pre="default", tokens=tokens, scores=[0, 0, 0, 0, -1.5, 0],
                      types=[2, 3, 3, 6, 1, 3], special_ids={"unk": 0, "bos": 1, "eos": 2},
                      add_bos=True, add_eos=False, add_space_prefix=False, chat_template="{{ x }}")
    proto = spm_model_proto(vocab)
    assert [p.piece for p in proto.pieces] == tokens
    assert [p.type for p in proto.pieces] == [2, 3, 3, 6, 1, 3]
    assert proto.pieces[4].score == -1.5
    assert proto.trainer_spec.byte_fallback and proto.trainer_spec.model_type == 2
    assert (proto.trainer_spec.unk_id, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id) == (0, 1, 2)
    assert proto.normalizer_spec.add_dummy_prefix is False  # the GGUF's add_space_prefix
    cfg = spm_tokenizer_config(vocab)
    assert cfg["tokenizer_class"] == "LlamaTokenizer" and cfg["add_bos_token"] and not cfg["add_eos_token"]
    assert cfg["added_tokens_decoder"]["5"]["content"] == "<|user|>" and cfg["added_tokens_decoder"]["5"]["special"]
    assert cfg["chat_template"] == "{{ x }}"


def test_a_cached_gguf_materialisation_with_an_older_tokenizer_gets_today_s(tmp_path):
    """Materialised GGUF folders are cached by the file's sha256; one written before these
    rules (transformers' tokenizer.json, no version in its mark) has its tokenizer rewritten
    in place on the next use, weights untouched, and then tokenizes like llama.cpp."""
    from ftpack.training.bases import load_tokenizer, materialise_gguf
    from ftpack.training.gguf_tokenizer import GGUF_TOKENIZER_VERSION

    from llama_vocab import vocab_test

    vocab, texts, expected = vocab_test("llama-spm")
    folder = materialise_gguf(vocab, cache_dir=tmp_path, tokenizer_only=True)
    mark_path = folder / "ftpack-source.json"
    mark = json.loads(mark_path.read_text(encoding="utf-8"))
    assert mark["tokenizer"] == GGUF_TOKENIZER_VERSION and (folder / "tokenizer.model").is_file()
    # as an older ftpack left it
    del mark["tokenizer"]
    mark_path.write_text(json.dumps(mark), encoding="utf-8")
    (folder / "tokenizer.model").unlink()
    (folder / "tokenizer.json").write_text("{}", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "TokenizersBackend"}', encoding="utf-8")
    (folder / "weights.stay").write_text("x", encoding="utf-8")

    assert materialise_gguf(vocab, cache_dir=tmp_path, tokenizer_only=True) == folder
    assert json.loads(mark_path.read_text(encoding="utf-8"))["tokenizer"] == GGUF_TOKENIZER_VERSION
    assert not (folder / "tokenizer.json").exists() and (folder / "tokenizer.model").is_file()
    assert (folder / "weights.stay").is_file()
    tok = load_tokenizer(folder)
    assert [tok(t, add_special_tokens=False).input_ids for t in texts] == expected
