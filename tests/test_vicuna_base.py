"""`--base vicuna-7b` for real, in miniature: Llama-2's real SentencePiece tokenizer as Vicuna
ships it (tokenizer.model only, LlamaTokenizer, legacy: false) and PyTorch `.bin` weights.

The tokenizer is llama.cpp's own Llama-2 test vocabulary written as a tokenizer.model
(tests/llama_vocab.py); the weights are a tiny random Llama with that 32,000-token
vocabulary. What must hold: the build succeeds without --allow-pickle, and the token ids
training uses equal llama.cpp's ids for the same text — with the vocab-only GGUF the data
stage checks and with the model's final GGUF — for every example in examples/ and for
text with leading spaces, double spaces, indentation, `</s>` boundaries and digits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llama_vocab import write_llama2_spm_folder

REPO = Path(__file__).resolve().parents[1]
HARD_CONVERSATIONS = [
    [{"role": "user", "content": "  two leading spaces"}, {"role": "assistant", "content": " one leading space"}],
    [{"role": "user", "content": "a  double  space and\n    indented\n\tcode"},
     {"role": "assistant", "content": "digits 12345 678.9 ½ and 3,000  "}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "And </s> in text?"},
     {"role": "assistant", "content": "USER: ASSISTANT: </s>USER:"}],
]


@pytest.fixture(scope="module")
def vicuna_like_base(tmp_path_factory) -> Path:
    """A tiny Llama with Llama-2's vocabulary, saved as Vicuna v1.5 is: .bin shards, tokenizer.model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = write_llama2_spm_folder(tmp_path_factory.mktemp("vicuna-like") / "vicuna-7b-v1.5")
    config = LlamaConfig(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    staging = folder.parent / "safetensors"
    model.save_pretrained(staging, max_shard_size="2MB")  # transformers 5 writes safetensors only
    _as_bin_shards(staging, folder)
    assert not list(folder.glob("*.safetensors")) and list(folder.glob("pytorch_model*.bin"))
    assert not (folder / "tokenizer.json").exists()
    return folder


def _as_bin_shards(staging: Path, folder: Path) -> None:
    """Copy the config files and re-save every shard with torch.save as pytorch_model-*.bin."""
    import shutil

    import torch
    from safetensors.torch import load_file

    for f in staging.glob("*.json"):
        if f.name != "model.safetensors.index.json":
            shutil.copy2(f, folder / f.name)
    index = json.loads((staging / "model.safetensors.index.json").read_text())
    shards = list(dict.fromkeys(index["weight_map"].values()))
    names = {s: f"pytorch_model-{i + 1:05d}-of-{len(shards):05d}.bin" for i, s in enumerate(shards)}
    for shard in shards:
        torch.save(load_file(staging / shard), folder / names[shard])
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": index.get("metadata", {}), "weight_map": {k: names[v] for k, v in index["weight_map"].items()}}))


def _example_conversations() -> list[list[dict]]:
    from ftpack.training.data import load_dataset

    convs = []
    for path in sorted(REPO.glob("examples/*.json*")):
        if path.name == "heldout.jsonl":
            continue
        convs += load_dataset(path).conversations
    return convs


def test_training_ids_equal_llama_cpp_for_every_example(vicuna_like_base, tmp_path):
    from ftpack.training.bases import load_tokenizer
    from ftpack.training.templates import load_template
    from ftpack.training.token_check import check_tokenization, write_vocab_gguf

    tokenizer = load_tokenizer(vicuna_like_base)
    template = load_template("vicuna_v1.1")
    vocab = write_vocab_gguf(vicuna_like_base, tmp_path / "vocab.gguf")
    convs = _example_conversations() + HARD_CONVERSATIONS
    assert len(convs) > 1300  # five example files of 279 conversations, plus the hard ones
    checked = check_tokenization(tokenizer, template, convs, vocab, sample=len(convs))
    assert checked.checked == len(convs) and not checked.mismatches and checked.tokens > 50_000


def test_transformers_default_tokenizer_would_fail_the_check(vicuna_like_base, tmp_path):
    """The check is not vacuous: AutoTokenizer's own load of this folder disagrees with llama.cpp."""
    from transformers import AutoTokenizer

    from ftpack.core.errors import FtpackError
    from ftpack.training.templates import load_template
    from ftpack.training.token_check import check_tokenization, write_vocab_gguf

    tokenizer = AutoTokenizer.from_pretrained(vicuna_like_base)
    vocab = write_vocab_gguf(vicuna_like_base, tmp_path / "vocab.gguf")
    with pytest.raises(FtpackError, match=r"Tokenization differs .* token \d+"):
        check_tokenization(tokenizer, load_template("vicuna_v1.1"), HARD_CONVERSATIONS, vocab)


@pytest.mark.slow
def test_build_from_bin_weights_and_final_gguf_tokenizes_like_training(vicuna_like_base, tmp_path, run_cli):
    from gguf import GGUFReader

    from ftpack.inference.runtime import open_llama
    from ftpack.training.bases import load_tokenizer
    from ftpack.training.templates import template_of_build
    from ftpack.training.token_check import inference_text, training_ids

    data = tmp_path / "hard.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in HARD_CONVERSATIONS * 4))
    out = tmp_path / "build"
    # --no-verify: a 4-step random model cannot be expected to answer and stop; the point here
    # is the tokenizer and the .bin weights through every stage up to Q4_K_M.
    result = run_cli("--json", "build", "vicuna-tiny", "--base", vicuna_like_base, "--data", data,
                     "--out", out, "--template", "vicuna_v1.1", "--method", "lora", "--max-steps", "4",
                     "--max-seq-length", "128", "--no-register", "--no-verify")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "build.json").read_text())
    assert manifest["stages"]["data"]["metrics"]["tokenization_equal"] is True
    # the trainer's own collated batches: every row is llama.cpp's ids for its conversation, and
    # the loss sits on exactly the trained tokens (token_check.check_collated_batches)
    train = manifest["stages"]["train"]["metrics"]
    assert train["batch_check_against"] == "llama.cpp (vocab.gguf)"
    assert train["batch_check_rows"] == manifest["stages"]["data"]["metrics"]["train_records"]
    assert 0 < train["batch_check_trained_tokens"] < train["batch_check_tokens"]
    quantized = out / "gguf" / "vicuna-tiny.Q4_K_M.gguf"
    ft = GGUFReader(str(quantized)).fields["general.file_type"]
    assert int(ft.parts[ft.data[0]][0]) == 15

    template = template_of_build(out)
    assert template.name == "vicuna_v1.1"
    f16 = next((out / "gguf").glob("*.f16.gguf"))
    adapter_tokenizer = load_tokenizer(out / "train" / "adapter")
    with open_llama(f16, vocab_only=True) as llm:
        for conv in _example_conversations()[:200] + HARD_CONVERSATIONS:
            ours = training_ids(adapter_tokenizer, template, conv)
            theirs = llm.tokenize(inference_text(adapter_tokenizer, template, conv).encode(), add_bos=True,
                                  special=True)
            assert ours == theirs
            assert ours.count(1) == 1  # BOS exactly once
