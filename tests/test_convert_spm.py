"""SentencePiece tokenizers (Llama-2 / Vicuna style) convert faithfully.

A tiny SentencePiece BPE model is trained on the spot with Llama-2's settings (byte
fallback, split digits, whitespace-only pieces, a dummy prefix), and saved the way real
Llama-2/Vicuna folders look: tokenizer.model + tokenizer.json (the "legacy" Llama fast
tokenizer: Prepend/Replace normalizer, byte-fallback BPE, BOS post-processor) +
tokenizer_config.json (with an added <pad> beyond the SentencePiece vocabulary, as many
Llama fine-tunes have). transformers 5 cannot build tokenizer.json from tokenizer.model
here (its converter needs protobuf), so the test writes it with `tokenizers`, as
Hugging Face's converter would.

ftpack's converter takes the SentencePiece path (tokenizer.ggml.model = llama) and
llama.cpp must then tokenize exactly like the Hugging Face fast tokenizer of the folder
(tokenizer.json, loaded as PreTrainedTokenizerFast) and like SentencePiece itself, and
give the same logits.

Measured caveat: transformers 5's ``LlamaTokenizer`` class (what AutoTokenizer picks for
tokenizer_class "LlamaTokenizer") ignores tokenizer.json's legacy normalizer and rebuilds
a Metaspace pipeline that drops one space where text *starts* with a space (" leading",
and text right after a special token such as "</s> and"). SentencePiece, tokenizer.json
and llama.cpp all keep it. The test pins that difference so a change in either shows up.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import torch
import llama_cpp
import sentencepiece as spm

from test_convert import CHAT, TOKENIZER_STRINGS, gguf_fields, hf_logits, llama_logits  # noqa: E402

SPM_F16_BOUND = 0.03  # same weights/shapes as the BPE tiny model; measured ~0.01
VICUNA_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + ' ' }}{% endif %}"
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ 'USER: ' + m['content'] + ' ' }}"
    "{% elif m['role'] == 'assistant' %}{{ 'ASSISTANT: ' + m['content'] + '</s>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
SPM_STRINGS = TOKENIZER_STRINGS + [
    "USER: What is the capital of France? ASSISTANT: Paris.</s>USER: and Japan?",
    "<s>text after BOS</s> and after EOS",
    "a<pad>b",
    "  two leading spaces",
]


def build_spm_tokenizer(folder: Path, vocab_size: int = 600) -> None:
    """tokenizer.model + tokenizer.json + tokenizer_config.json, like a Llama-2 folder."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from transformers.convert_slow_tokenizer import generate_merges

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_model import training_corpus

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_corpus()), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", character_coverage=0.9995, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1, minloglevel=2)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = {sp.id_to_piece(i): i for i in range(sp.vocab_size())}
    merges = generate_merges(vocab, [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.vocab_size())])
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ("<unk>", "<s>", "</s>")])
    tok.add_special_tokens([AddedToken("<pad>", normalized=False, special=True)])  # id = vocab_size
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    tok.save(str(folder / "tokenizer.json"))
    decoder = {str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                        "special": True} for i, c in [(0, "<unk>"), (1, "<s>"), (2, "</s>"), (vocab_size, "<pad>")]}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "legacy": True, "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
        "model_max_length": 512, "clean_up_tokenization_spaces": False, "chat_template": VICUNA_TEMPLATE,
        "added_tokens_decoder": decoder}, indent=2))


@pytest.fixture(scope="module")
def spm_llama(tmp_path_factory) -> Path:
    """A tiny random Llama (Vicuna-like) whose tokenizer is SentencePiece."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("spm-llama") / "model"
    folder.mkdir()
    build_spm_tokenizer(folder)
    config = LlamaConfig(vocab_size=601, hidden_size=256, intermediate_size=768, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                         pad_token_id=600)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    model.save_pretrained(folder)
    return folder


def test_spm_llama_converts_and_tokenizes_like_hf(spm_llama, tmp_path):
    from transformers import PreTrainedTokenizerFast

    from ftpack.gguf.convert import convert_to_gguf

    out = tmp_path / "spm.f16.gguf"
    result = convert_to_gguf(spm_llama, out, outtype="f16")
    assert result.pre_tokenizer is None  # SentencePiece: no BPE pre-tokenizer
    s = gguf_fields(out)
    assert s["tokenizer_model"] == "llama"
    assert s["add_bos_token"] is True and s["add_eos_token"] is False
    assert s["special_tokens"]["bos"]["text"] == "<s>" and s["special_tokens"]["eos"]["text"] == "</s>"
    assert s["special_tokens"]["pad"]["text"] == "<pad>"  # the added token beyond tokenizer.model
    assert s["chat_template"] == VICUNA_TEMPLATE

    fast = PreTrainedTokenizerFast.from_pretrained(spm_llama)  # tokenizer.json as shipped
    sp = spm.SentencePieceProcessor(model_file=str(spm_llama / "tokenizer.model"))
    chat_text = fast.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    llm = llama_cpp.Llama(str(out), logits_all=True, verbose=False, n_ctx=512, n_threads=2, seed=0)
    try:
        for text in SPM_STRINGS + [chat_text]:
            hf_ids = fast(text).input_ids
            assert hf_ids[0] == 1  # BOS added, as Llama's tokenizer does
            cpp_ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
            assert cpp_ids == hf_ids, f"tokenization differs for {text!r}: HF {hf_ids} vs llama.cpp {cpp_ids}"
            if "<" not in text:  # SentencePiece itself knows no special tokens
                assert cpp_ids == [1] + sp.encode(text), text
        ids = fast(chat_text).input_ids
        ours = llama_logits(llm, ids)
    finally:
        llm.close()
    ref = hf_logits(spm_llama, ids)
    diff = float(np.abs(ours - ref).max())
    print(f"SentencePiece tiny Llama: {len(ids)} tokens, max |logit diff| {diff:.4f}")
    assert (ours.argmax(-1) == ref.argmax(-1)).all()
    assert diff < SPM_F16_BOUND


def test_transformers5_llama_tokenizer_drops_a_leading_space(spm_llama):
    """The known difference (see the module docstring), pinned: if transformers changes,
    this fails and the caveat can go."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    auto = AutoTokenizer.from_pretrained(spm_llama)
    fast = PreTrainedTokenizerFast.from_pretrained(spm_llama)
    assert type(auto).__name__ == "LlamaTokenizer"
    assert auto("Hello world").input_ids == fast("Hello world").input_ids
    assert auto("USER: hi</s>USER: yo").input_ids == fast("USER: hi</s>USER: yo").input_ids
    assert auto(" leading").input_ids != fast(" leading").input_ids
