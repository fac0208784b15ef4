"""Streaming merge == PEFT's merge_and_unload, for LoRA and DoRA, on the tiny Llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

PROMPT_IDS = [1, 3, 319, 261, 203, 76, 77, 4, 40, 51, 300, 12, 99, 250, 480, 7]


def make_random_adapter(base: Path, out: Path, *, dora: bool = False, seed: int = 0, rank: int = 8) -> Path:
    """A PEFT adapter on every linear layer with random (non-zero) factors."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", use_dora=dora,
                     rank_pattern={"down_proj": rank // 2}, alpha_pattern={"down_proj": rank})
    peft_model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
            elif "lora_magnitude_vector" in name:
                p.mul_(1 + 0.2 * torch.randn(p.shape, generator=gen))
    peft_model.save_pretrained(out)
    return out


def logits_of(model, ids=PROMPT_IDS):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def peft_merged_logits(base: Path, adapter: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return logits_of(merged)


@pytest.fixture(scope="module")
def lora_adapter(tiny_llama, tmp_path_factory) -> Path:
    return make_random_adapter(tiny_llama, tmp_path_factory.mktemp("lora") / "adapter")


@pytest.fixture(scope="module")
def dora_adapter(tiny_llama, tmp_path_factory) -> Path:
    return make_random_adapter(tiny_llama, tmp_path_factory.mktemp("dora") / "adapter", dora=True, seed=1)


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_merge_equals_peft_merge_and_unload(kind, tiny_llama, lora_adapter, dora_adapter, tmp_path, run_cli):
    from transformers import AutoModelForCausalLM

    adapter = lora_adapter if kind == "lora" else dora_adapter
    out = tmp_path / "merged"
    res = run_cli("merge", "--base", tiny_llama, "--adapter", adapter, "-o", out, "--dtype", "f32")
    assert res.exit_code == 0, res.output
    ours = logits_of(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32))
    reference = peft_merged_logits(tiny_llama, adapter)
    base = logits_of(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32))
    diff = (ours - reference).abs().max().item()
    print(f"{kind}: max |ftpack merge - PEFT merge_and_unload| = {diff:.2e}; "
          f"adapter moves logits by {(reference - base).abs().max().item():.3f}")
    assert (reference - base).abs().max().item() > 0.05  # the adapter is not a no-op
    assert diff <= 1e-5
    # the merged folder is complete: tokenizer + chat template + config travel with it
    assert (out / "tokenizer.json").is_file() and (out / "chat_template.jinja").is_file()
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]


def test_merge_keeps_base_sharding_and_16bit(tiny_llama, lora_adapter, tmp_path, run_cli):
    """A sharded bf16 base gives a sharded bf16 merged copy (never another dtype by accident)."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    base = tmp_path / "base-bf16"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16)
    model.save_pretrained(base, max_shard_size="2MB")
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (base / f).write_bytes((tiny_llama / f).read_bytes())
    shards = sorted(base.glob("model-*.safetensors"))
    assert len(shards) > 1
    out = tmp_path / "merged"
    res = run_cli("merge", "--base", base, "--adapter", lora_adapter, "-o", out)
    assert res.exit_code == 0, res.output
    assert len(sorted(out.glob("model-*.safetensors"))) == len(shards)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    with safe_open(out / index["weight_map"]["model.layers.0.self_attn.q_proj.weight"], "pt") as fh:
        q = fh.get_tensor("model.layers.0.self_attn.q_proj.weight")
    assert q.dtype == torch.bfloat16
    # same result as PEFT merging into the bf16 base (up to bf16 rounding of the output)
    reference = peft_merged_logits(base, lora_adapter)
    ours = logits_of(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32))
    assert (ours - reference).abs().max().item() < 0.05


def test_adapter_for_another_base_is_a_clear_error(tiny_llama, tmp_path, run_cli):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    get_peft_model(other, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(tmp_path / "ad")
    res = run_cli("merge", "--base", tiny_llama, "--adapter", tmp_path / "ad", "-o", tmp_path / "out")
    assert res.exit_code == 2
    assert "does not fit the base model" in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "out").exists()  # nothing half-written left behind


def test_merge_refuses_non_adapter_and_missing_base(tiny_llama, tmp_path, run_cli):
    res = run_cli("merge", "--base", tiny_llama, "--adapter", tiny_llama, "-o", tmp_path / "o")
    assert res.exit_code == 2 and "not a PEFT adapter" in res.output
    res = run_cli("merge", "--base", tmp_path / "nope", "--adapter", tiny_llama, "-o", tmp_path / "o")
    assert res.exit_code == 2 and "Traceback" not in res.output
