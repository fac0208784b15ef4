"""The tiny Llama fixture really is what the other tests assume."""

from __future__ import annotations

import json


def test_tiny_llama_shape_and_tokenizer(tiny_llama):
    cfg = json.loads((tiny_llama / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["hidden_size"] == 256 and cfg["num_hidden_layers"] == 2
    assert cfg["num_key_value_heads"] < cfg["num_attention_heads"]  # GQA
    assert cfg["intermediate_size"] % 256 == 0
    assert (tiny_llama / "model.safetensors").exists()

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    msgs = [{"role": "user", "content": "Hello café 東京"}, {"role": "assistant", "content": "Hi."}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == "<|im_start|>user\nHello café 東京<|im_end|>\n<|im_start|>assistant\nHi.<|im_end|>\n"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids[1:]) == text  # byte-level BPE round-trips unicode
    assert tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id


def test_tiny_llama_runs(tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    logits = model(torch.tensor([[1, 5, 9, 42]])).logits
    assert logits.shape == (1, 4, model.config.vocab_size)
    assert logits[0, -1].std() > 0.1  # random but not degenerate
