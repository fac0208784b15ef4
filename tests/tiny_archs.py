"""Tiny random models of every architecture ftpack offers, each with a tokenizer llama.cpp accepts.

One :class:`ArchCase` per architecture (llama with Llama-2's SentencePiece vocabulary,
llama with Llama-3's BPE vocabulary and Llama-3.1 rope scaling, mistral, qwen2, qwen3,
gemma2, gemma3, phi3, gemma4). :func:`build_tiny_model` writes a Hugging Face folder: a model
built from transformers' own config class (2 layers, hidden 64, GQA), random weights
drawn wider than the default init so logits are not all alike, and a tokenizer:

- Real vocabularies from llama.cpp's own test files (``models/ggml-vocab-*.gguf`` in the
  llama-cpp-python sdist, see tests/llama_vocab.py): Llama-2's SentencePiece model written
  as the ``tokenizer.model`` Vicuna ships (llama, mistral), Phi-3-mini's (the same pieces
  plus its added chat tokens, laid out as Microsoft ships it), and the BPE tokenizers of
  Llama 3 and Qwen2 as ftpack writes a GGUF base's training tokenizer
  (ftpack.training.gguf_tokenizer; Llama 3's then configured like Meta's folder).
  llama.cpp's converter refuses a BPE tokenizer whose pre-tokenizer check hash it does
  not know, so a BPE family needs its real vocabulary.
- For Gemma 2/3 (converter reads ``tokenizer.model``, no hash check): a SentencePiece model
  trained on the spot in Gemma's layout, ``<start_of_turn>``/``<end_of_turn>`` as
  user-defined pieces listed in tokenizer_config.json's ``added_tokens_decoder`` as the
  real folders have them (llama.cpp's converter takes their special flag from there).

The rebuilt BPE tokenizers take ~25 s each, so they are kept in ftpack's cache
(``$FTPACK_CACHE/test-tokenizers``), keyed by the vocab file's sha256.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

HIDDEN = 64
INTERMEDIATE = 128
LAYERS = 2
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
CONTEXT = 512
INIT_STD = 0.08  # weights ~N(0, 0.08): logits that differ between tokens (default init gives ~flat ones)

NAMES = "Ada Bo Cy Di Ed Flo Gus Hal Ivy Jo Kim Lu".split()


@dataclass(frozen=True)
class ArchCase:
    """One architecture to prove: how to build it and what ftpack must do with it."""

    name: str  # test id
    hf_architecture: str  # config.json architectures[0]
    gguf_architecture: str  # general.architecture llama.cpp writes
    route: str  # "own" (ftpack's streaming converter) | "vendored" (llama.cpp's convert_hf_to_gguf.py)
    template: str  # ftpack chat template (templates/*.toml); "" when the build chooses (gemma4: Ollama's renderer)
    tokenizer: str  # key of TOKENIZERS
    config: Callable[[dict[str, Any]], Any]  # tokenizer facts -> transformers config


# -- tokenizers ---------------------------------------------------------------------------

def _vocab_sha(name: str) -> tuple[Path, str]:
    from ftpack.core.atomic import sha256_file
    from ftpack.gguf.vendored import vendored_source

    vocab = vendored_source().vocab_tests()[name][0]
    return vocab, sha256_file(vocab)


def rebuild_gguf_tokenizer(vocab: Path, out: Path) -> Path:
    """The training tokenizer of a GGUF saved to ``out`` by the very function
    ftpack.training.bases' GGUF materialisation (``--base file.gguf``, ``ollama:``) uses."""
    from ftpack.training.bases import save_gguf_tokenizer

    save_gguf_tokenizer(Path(vocab), Path(out))
    return Path(out)


def gguf_tokenizer_folder(name: str) -> Path:
    """llama.cpp's ``ggml-vocab-<name>.gguf`` as ftpack's training tokenizer, saved (cached by
    the vocab file and the version of ftpack's GGUF tokenizer rules)."""
    from ftpack.core.locations import cache_dir
    from ftpack.training.gguf_tokenizer import GGUF_TOKENIZER_VERSION

    vocab, digest = _vocab_sha(name)
    target = cache_dir() / "test-tokenizers" / f"{name}-{digest[:16]}-v{GGUF_TOKENIZER_VERSION}"
    if (target / "tokenizer.json").is_file():
        return target
    work = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    rebuild_gguf_tokenizer(vocab, work)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(work, target)
    return target


def llama3_folder(out: Path) -> Path:
    """Llama 3's tokenizer as Meta ships it, from llama.cpp's ``ggml-vocab-llama-bpe.gguf``.

    transformers' rebuild from the GGUF differs from the real tokenizer.json in three ways:
    the BPE model's ``ignore_merges`` (a word in the vocabulary is one token, as llama.cpp
    does for this pre-tokenizer), the BOS post-processor, and an extra ``<|endoftext|>``
    appended after the 128,256 real tokens. ftpack's GGUF tokenizer fixes them already;
    they are set here again (idempotent) with the chat model's EOS and class.
    """
    shutil.copytree(gguf_tokenizer_folder("llama-bpe"), out, dirs_exist_ok=True)
    tj = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    n_real = 128256
    tj["model"]["ignore_merges"] = True
    tj["added_tokens"] = [t for t in tj["added_tokens"] if t["id"] < n_real]
    bos = "<|begin_of_text|>"
    tj["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [128000], "tokens": [bos]}}}
    (out / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    cfg = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg.update({"bos_token": bos, "eos_token": "<|eot_id|>", "add_bos_token": True, "tokenizer_class":
                "PreTrainedTokenizerFast", "model_max_length": CONTEXT})
    cfg.pop("added_tokens_decoder", None)
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    return out


def llama2_spm_folder(out: Path) -> Path:
    """Llama-2's real SentencePiece vocabulary, laid out as Vicuna-7B-v1.5 ships it."""
    from llama_vocab import write_llama2_spm_folder

    return write_llama2_spm_folder(out)


def _added_tokens_decoder(tokens: dict[int, str], rstrip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """tokenizer_config.json's ``added_tokens_decoder`` as save_pretrained writes it (every real
    folder has one; llama.cpp's converter reads the chat markers' special flag from it)."""
    return {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": t in rstrip,
                     "single_word": False, "special": True} for i, t in sorted(tokens.items())}


def trained_spm_folder(out: Path, *, specials: list[str], tokenizer_class: str, bos: str, eos: str,
                       pad: str, unk: str, dummy_prefix: bool, vocab_size: int = 600) -> Path:
    """A SentencePiece BPE model trained here on tiny_model's corpus (byte fallback, digits
    split), its special pieces at ids 0-3 and the chat markers as user-defined pieces."""
    import sentencepiece as spm

    from tiny_model import training_corpus

    corpus = training_corpus() + [f"Say hello to {n}. Hello, {n}!" for n in NAMES] * 20
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
        add_dummy_prefix=dummy_prefix, normalization_rule_name="identity", character_coverage=0.9995,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece=pad, eos_piece=eos, bos_piece=bos, unk_piece=unk,
        user_defined_symbols=specials, num_threads=1, minloglevel=2)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(buf.getvalue())
    added = {i: t for i, t in enumerate([pad, eos, bos, unk, *specials])}
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": tokenizer_class, "bos_token": bos, "eos_token": eos, "pad_token": pad,
        "unk_token": unk, "add_bos_token": True, "add_eos_token": False, "legacy": False,
        "model_max_length": CONTEXT, "added_tokens_decoder": _added_tokens_decoder(added)}, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": bos, "eos_token": eos, "pad_token": pad, "unk_token": unk}, indent=2))
    return out


def gemma_spm_folder(out: Path) -> Path:
    """Gemma's layout: <pad> 0, <eos> 1, <bos> 2, <unk> 3, no dummy prefix, turn markers."""
    return trained_spm_folder(out, specials=["<start_of_turn>", "<end_of_turn>"], tokenizer_class="GemmaTokenizer",
                              bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", dummy_prefix=False)


#: Phi-3-mini-4k-instruct's added tokens (ids 32000-32010): all special, the chat markers
#: with ``rstrip`` (the whitespace after them belongs to the marker), as its tokenizer_config.json has them.
PHI3_RSTRIP = frozenset({"<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
                         "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>",
                         "<|user|>"})


def phi3_folder(out: Path) -> Path:
    """Phi-3-mini's real vocabulary (llama.cpp's ``ggml-vocab-phi-3.gguf``) laid out as the
    model ships it: Llama-2's ``tokenizer.model`` (32,000 pieces), ``LlamaTokenizer`` with
    ``legacy: false``, the added tokens 32000-32010 in added_tokens.json and tokenizer_config.json."""
    import gguf
    from sentencepiece import sentencepiece_model_pb2 as pb

    from llama_vocab import vocab_test

    reader = gguf.GGUFReader(str(vocab_test("phi-3")[0]))
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    scores = reader.fields["tokenizer.ggml.scores"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    n_spm = 32000
    piece_type = pb.ModelProto.SentencePiece.Type
    type_map = {1: piece_type.NORMAL, 2: piece_type.UNKNOWN, 3: piece_type.CONTROL,
                4: piece_type.USER_DEFINED, 5: piece_type.UNUSED, 6: piece_type.BYTE}
    model = pb.ModelProto()
    for tok, score, typ in zip(tokens[:n_spm], scores[:n_spm], types[:n_spm]):
        piece = model.pieces.add()
        piece.piece, piece.score, piece.type = tok, float(score), type_map[int(typ)]
    spec = model.trainer_spec
    spec.model_type, spec.vocab_size, spec.byte_fallback, spec.split_digits = pb.TrainerSpec.BPE, n_spm, True, True
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = 0, 1, 2, -1
    norm = model.normalizer_spec
    norm.name, norm.add_dummy_prefix, norm.remove_extra_whitespaces, norm.escape_whitespaces = \
        "identity", True, False, True
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(model.SerializeToString())
    added = {i: tokens[i] for i in range(n_spm, len(tokens)) if int(types[i]) == 3}
    assert added[32010] == "<|user|>" and added[32007] == "<|end|>"
    (out / "added_tokens.json").write_text(json.dumps({t: i for i, t in added.items()}, indent=2))
    decoder = _added_tokens_decoder({0: "<unk>", 1: "<s>", 2: "</s>", **added}, PHI3_RSTRIP | {"</s>"})
    decoder["2"]["special"] = False
    (out / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": decoder, "bos_token": "<s>",
        "clean_up_tokenization_spaces": False, "eos_token": "<|endoftext|>", "legacy": False,
        "model_max_length": 4096, "pad_token": "<|endoftext|>", "padding_side": "left", "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>", "use_default_system_prompt": False}, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>"},
        indent=2))
    return out


def _copy_gguf_tokenizer(name: str) -> Callable[[Path], Path]:
    def write(out: Path) -> Path:
        shutil.copytree(gguf_tokenizer_folder(name), out, dirs_exist_ok=True)
        return out

    return write


#: tokenizer key -> writer(folder) -> folder
TOKENIZERS: dict[str, Callable[[Path], Path]] = {
    "llama-spm": llama2_spm_folder,
    "llama-bpe": llama3_folder,
    "qwen2": _copy_gguf_tokenizer("qwen2"),
    "gemma-spm": gemma_spm_folder,
    "phi-3": phi3_folder,
    "gemma-4": _copy_gguf_tokenizer("gemma-4"),
}


def tokenizer_facts(folder: Path) -> dict[str, Any]:
    """vocab size and special ids of a tokenizer folder (what the model config needs)."""
    from ftpack.training.bases import load_tokenizer

    tok = load_tokenizer(folder)
    return {"vocab_size": len(tok), "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id}


# -- model configs ------------------------------------------------------------------------

def _common(t: dict[str, Any]) -> dict[str, Any]:
    return dict(vocab_size=t["vocab_size"], hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                max_position_embeddings=CONTEXT, bos_token_id=t["bos_token_id"], eos_token_id=t["eos_token_id"],
                pad_token_id=t["pad_token_id"])


def llama_config(t: dict[str, Any]):
    from transformers import LlamaConfig

    return LlamaConfig(**_common(t), tie_word_embeddings=False)


def llama3_config(t: dict[str, Any]):
    """Llama 3.1's rope scaling, with a short original context so that it changes every
    rotary frequency of the tiny head (head_dim 16) instead of none."""
    from transformers import LlamaConfig

    return LlamaConfig(**_common(t), tie_word_embeddings=True, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64})


def mistral_config(t: dict[str, Any]):
    from transformers import MistralConfig

    return MistralConfig(**_common(t), head_dim=HEAD_DIM, sliding_window=None, tie_word_embeddings=False)


def qwen2_config(t: dict[str, Any]):
    from transformers import Qwen2Config

    return Qwen2Config(**_common(t), tie_word_embeddings=True)


def qwen3_config(t: dict[str, Any]):
    from transformers import Qwen3Config

    return Qwen3Config(**_common(t), head_dim=HEAD_DIM, tie_word_embeddings=True)


def gemma2_config(t: dict[str, Any]):
    # llama.cpp scales queries by 1/sqrt(head_dim) and ignores query_pre_attn_scalar: real
    # Gemma 2 configs set it to head_dim (tests/test_vendored.py measured the difference)
    from transformers import Gemma2Config

    return Gemma2Config(**_common(t), head_dim=HEAD_DIM, query_pre_attn_scalar=HEAD_DIM, sliding_window=128)


def gemma3_config(t: dict[str, Any]):
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(**_common(t), head_dim=HEAD_DIM, query_pre_attn_scalar=HEAD_DIM, sliding_window=128)


def gemma4_config(t: dict[str, Any]):
    """Gemma 4's text model as the E2B/E4B checkpoints have it, shrunk: sliding layers then a
    full one whose head is twice as wide, proportional rope (a quarter of the dims rotate),
    per-layer embeddings, final logit softcapping."""
    from transformers import Gemma4TextConfig

    return Gemma4TextConfig(**_common(t), head_dim=HEAD_DIM, layer_types=["sliding_attention", "full_attention"],
                            per_layer_config={"01": {"head_dim": 2 * HEAD_DIM}}, sliding_window=128,
                            hidden_size_per_layer_input=16, vocab_size_per_layer_input=t["vocab_size"],
                            final_logit_softcapping=30.0, tie_word_embeddings=True)


def phi3_config(t: dict[str, Any]):
    from transformers import Phi3Config

    # Phi-3-mini's ids: 32,064 embeddings, <|endoftext|> (32000) ends and pads
    return Phi3Config(**{**_common(t), "vocab_size": 32064, "bos_token_id": 1, "eos_token_id": 32000,
                         "pad_token_id": 32000}, original_max_position_embeddings=CONTEXT, tie_word_embeddings=False)


CASES: dict[str, ArchCase] = {c.name: c for c in (
    ArchCase("llama", "LlamaForCausalLM", "llama", "own", "llama2", "llama-spm", llama_config),
    ArchCase("llama3", "LlamaForCausalLM", "llama", "own", "llama3", "llama-bpe", llama3_config),
    ArchCase("mistral", "MistralForCausalLM", "llama", "own", "mistral", "llama-spm", mistral_config),
    ArchCase("qwen2", "Qwen2ForCausalLM", "qwen2", "own", "chatml", "qwen2", qwen2_config),
    ArchCase("qwen3", "Qwen3ForCausalLM", "qwen3", "own", "chatml", "qwen2", qwen3_config),
    ArchCase("gemma2", "Gemma2ForCausalLM", "gemma2", "vendored", "gemma", "gemma-spm", gemma2_config),
    ArchCase("gemma3", "Gemma3ForCausalLM", "gemma3", "vendored", "gemma", "gemma-spm", gemma3_config),
    ArchCase("phi3", "Phi3ForCausalLM", "phi3", "vendored", "phi3", "phi-3", phi3_config),
    ArchCase("gemma4", "Gemma4ForCausalLM", "gemma4", "vendored", "", "gemma-4", gemma4_config),
)}


# -- the model folder ---------------------------------------------------------------------

def randomize(model, seed: int = 0) -> None:
    """Weights ~N(0, INIT_STD), norms ~N(0, 0.1) around their init (deterministic)."""
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, INIT_STD)
            else:
                p.add_(torch.randn_like(p) * 0.1)


def build_tiny_model(case: ArchCase, out: Path) -> Path:
    """A Hugging Face folder (safetensors, config.json, tokenizer) of ``case``'s architecture."""
    from transformers import AutoModelForCausalLM

    out = Path(out)
    TOKENIZERS[case.tokenizer](out)
    config = case.config(tokenizer_facts(out))
    model = AutoModelForCausalLM.from_config(config)
    randomize(model)
    model.save_pretrained(out, safe_serialization=True)
    saved = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert saved["architectures"] == [case.hf_architecture], saved["architectures"]
    return out

