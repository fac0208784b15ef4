"""A tiny random-init Llama with a tokenizer trained on the spot (no download).

Shapes follow real Llama models in small: hidden 256, 2 layers, 4 heads with 2
key/value heads (GQA), intermediate 768 (a multiple of 256, so llama.cpp's K-quants
apply), BOS added by the tokenizer like Llama's, ChatML special tokens and a ChatML
chat template with `{% generation %}` markers (TRL's assistant-only loss needs them).
"""

from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]

_WORDS = (
    "the a an of to in is was for on that with as by it at from this be are or which have has "
    "model data train answer question user assistant system capital city river mountain color "
    "number one two three four five six seven eight nine ten hundred thousand what who where when "
    "why how name product manual battery charge device light button press hold seconds minutes "
    "hello world thanks please yes no maybe friendly helpful short long reply explain because "
    "Paris France Berlin Germany Rome Italy Tokyo Japan Ollama llama gguf quantize merge adapter"
).split()


def training_corpus(n: int = 3000) -> list[str]:
    """Deterministic pseudo-English with punctuation, digits and unicode."""
    import random

    rng = random.Random(1234)
    lines = []
    for i in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 16))]
        line = " ".join(words).capitalize() + rng.choice([".", "?", "!", ":"])
        if i % 7 == 0:
            line += f" {rng.randint(0, 99999)}"
        if i % 11 == 0:
            line += " café naïve — “quoted” 東京 ñ ü €"
        if i % 13 == 0:
            line = "  " + line + "\n\tindented"
        lines.append(line)
    return lines


def build_tokenizer(save_dir: Path, vocab_size: int = 512):
    """Train a byte-level BPE tokenizer and save it as a Hugging Face fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>", unk_token="<unk>",
        pad_token="</s>", additional_special_tokens=["<|im_start|>"],
        chat_template=CHATML_TEMPLATE, model_max_length=512,
    )
    fast.add_bos_token = True
    fast.save_pretrained(save_dir)
    return fast


def build_tiny_llama(save_dir: Path, *, hidden: int = 256, layers: int = 2, heads: int = 4,
                     kv_heads: int = 2, intermediate: int = 768, seed: int = 0) -> Path:
    """Write tokenizer + random-init LlamaForCausalLM (safetensors) to ``save_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(save_dir)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger-than-default init: logits that are not all ~equal
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(save_dir, safe_serialization=True)
    return save_dir
