"""Streaming merge == PEFT's merge_and_unload, for LoRA and DoRA, on the tiny Llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import torch

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


def test_qlora_trained_adapter_folds_into_the_16bit_base(tiny_llama, tmp_path, run_cli):
    """An adapter trained with QLoRA (4-bit NF4 base during training, by ftpack.training.train) is
    folded into the 16/32-bit base on disk: same logits as PEFT merging it into an fp32
    load of the base, and `convert --adapter` gives llama.cpp those same logits."""
    import numpy as np
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from ftpack.training.train import train

    rows = [{"messages": [{"role": "user", "content": f"What is the capital number {i}?"},
                          {"role": "assistant", "content": f"The capital is {c}."}]}
            for i, c in enumerate(["Paris", "Berlin", "Rome", "Tokyo"] * 2)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result = train(tiny_llama, data, tmp_path / "run", method="qlora", max_steps=3, per_device_train_batch_size=4,
                   learning_rate=1e-2, lora_dropout=0.0, save_steps=100)
    assert result.method == "qlora" and result.steps == 3
    assert result.metrics["base_4bit_layers"] == 14  # the base was really loaded in 4 bits (2 blocks x 7 linears)
    adapter = result.output
    # fp32 reference: PEFT merge_and_unload into an fp32 load of the base
    reference = peft_merged_logits(tiny_llama, adapter)
    base_logits = logits_of(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32))
    assert (reference - base_logits).abs().max().item() > 1e-3  # training moved the adapter

    out = tmp_path / "merged-f32"
    res = run_cli("merge", "--base", tiny_llama, "--adapter", adapter, "-o", out, "--dtype", "f32")
    assert res.exit_code == 0, res.output
    ours = logits_of(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32))
    assert (ours - reference).abs().max().item() <= 1e-5
    assert "quantization_config" not in json.loads((out / "config.json").read_text())

    # a bf16 base gives a bf16 merged copy: 16-bit weights, never 4-bit
    bf16_base = tmp_path / "base-bf16"
    AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16).save_pretrained(bf16_base)
    out16 = tmp_path / "merged-bf16"
    assert run_cli("merge", "--base", bf16_base, "--adapter", adapter, "-o", out16).exit_code == 0
    with safe_open(out16 / "model.safetensors", "pt") as fh:
        assert {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.bfloat16}
    assert (logits_of(AutoModelForCausalLM.from_pretrained(out16, dtype=torch.float32)) - peft_merged_logits(
        bf16_base, adapter)).abs().max().item() < 0.05

    # convert --adapter (f32) == the PEFT-merged model, as llama.cpp computes it
    import llama_cpp

    gguf_path = tmp_path / "qlora.f32.gguf"
    assert run_cli("convert", tiny_llama, "--adapter", adapter, "-o", gguf_path, "--outtype", "f32").exit_code == 0
    llm = llama_cpp.Llama(str(gguf_path), logits_all=True, verbose=False, n_ctx=64, n_threads=2, seed=0)
    try:
        llm.eval(PROMPT_IDS)
        cpp = np.array(llm.scores[: len(PROMPT_IDS)], dtype=np.float32)
    finally:
        llm.close()
    ref = reference.numpy()
    assert (cpp.argmax(-1) == ref.argmax(-1)).all()
    assert float(np.abs(cpp - ref).max()) < 0.02  # llama.cpp's F16 KV cache; f32 weights


def test_bf16_rounding_matches_torch():
    """numpy bf16 conversion (no torch on the merge path) is bit-identical to torch's."""
    import numpy as np

    from ftpack.gguf.safetensors_io import f32_to_bf16_bits, to_float32

    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(100_000, generator=gen) * 10 ** torch.randint(-30, 30, (100_000,), generator=gen),
                   torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-40, -1e-45, 3.3895e38,
                                 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8])])  # ties round to even, subnormals, overflow
    ours = f32_to_bf16_bits(x.numpy())
    theirs = x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    nan = np.isnan(x.numpy())
    assert np.array_equal(ours[~nan], theirs[~nan])  # NaN payloads differ by build; NaN stays NaN
    back = to_float32(ours, "BF16")
    assert np.array_equal(back, x.to(torch.bfloat16).float().numpy(), equal_nan=True)


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_merge_in_small_row_chunks_is_identical(kind, tiny_llama, lora_adapter, dora_adapter, tmp_path,
                                                monkeypatch):
    """Row-chunked merging (how big tensors stay small in memory) gives the same values as
    one chunk per tensor (up to float32 rounding of B @ A, which BLAS blocks differently
    for different row counts); the tiny model's tensors normally fit in one chunk."""
    from safetensors.numpy import load_file

    from ftpack.gguf import lora
    from ftpack.gguf.merge import merge_adapter

    adapter = lora_adapter if kind == "lora" else dora_adapter
    merge_adapter(tiny_llama, adapter, tmp_path / "whole", dtype="f32")
    monkeypatch.setattr(lora, "CHUNK_BYTES", 3 * 256 * 4)  # 3 rows of a 256-wide tensor at a time
    assert lora.chunk_rows((768, 256), None) == 3
    merge_adapter(tiny_llama, adapter, tmp_path / "chunked", dtype="f32")
    whole = load_file(tmp_path / "whole" / "model.safetensors")
    chunked = load_file(tmp_path / "chunked" / "model.safetensors")
    assert whole.keys() == chunked.keys()
    for name, w in whole.items():
        diff = float(abs(w - chunked[name]).max())
        assert diff <= 1e-6 * max(1.0, float(abs(w).max())), (name, diff)


def test_merge_never_deletes_a_folder_ftpack_did_not_write(tiny_llama, lora_adapter, tmp_path, run_cli):
    """Defect: `ftpack merge -o ~/models` silently wiped ~/models. Now: exit 2, untouched."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "notes.txt").write_text("mine")
    for extra in ((), ("--overwrite",)):
        res = run_cli("merge", "--base", tiny_llama, "--adapter", lora_adapter, "-o", models, *extra)
        assert res.exit_code == 2, res.output
        assert "ftpack did not write" in res.output and "Traceback" not in res.output
        assert [p.name for p in models.iterdir()] == ["notes.txt"]


def test_merge_never_deletes_its_inputs(tiny_llama, lora_adapter, tmp_path, run_cli):
    """Defect: `-o work` with base and adapter inside `work` deleted them."""
    import shutil

    work = tmp_path / "work"
    shutil.copytree(tiny_llama, work / "base")
    shutil.copytree(lora_adapter, work / "adapter")
    before = sorted(p.relative_to(work) for p in work.rglob("*"))
    for out, extra in ((work, ()), (work, ("--overwrite",)), (work / "adapter", ("--overwrite",))):
        res = run_cli("merge", "--base", work / "base", "--adapter", work / "adapter", "-o", out, *extra)
        assert res.exit_code == 2, res.output
        assert "holds the input" in res.output
    assert sorted(p.relative_to(work) for p in work.rglob("*")) == before


def test_merge_overwrite_replaces_only_an_earlier_ftpack_output(tiny_llama, lora_adapter, tmp_path, run_cli):
    out = tmp_path / "merged"
    assert run_cli("merge", "--base", tiny_llama, "--adapter", lora_adapter, "-o", out).exit_code == 0
    (out / "left-over.txt").write_text("from the first merge's folder")
    res = run_cli("merge", "--base", tiny_llama, "--adapter", lora_adapter, "-o", out)
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert (out / "left-over.txt").is_file()
    res = run_cli("merge", "--base", tiny_llama, "--adapter", lora_adapter, "-o", out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert not (out / "left-over.txt").exists() and (out / "model.safetensors").is_file()
