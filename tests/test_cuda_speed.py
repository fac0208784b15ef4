"""The GPU fast path (ftpack/training/cuda_speed.py), as far as a CPU can prove it.

- The plan: what auto chooses on CUDA and on a CPU, and why; explicit choices that cannot
  run are exit-2 errors.
- Padding-free batches are the same training: on the tiny Llama the per-step losses and
  the trained adapter equal those of padded batches (fp32 and bf16 autocast), the batch
  check proves the one-row batches, and the token count is the real one.
- A 4-bit base that keeps its bf16 weights computes what PEFT's fp32-copy preparation
  computes (bitsandbytes runs 4-bit on CPU), with no fp32 copies left.
- Liger Kernel patches the model's norms, MLPs and RoPE (applied in a fresh process: its
  RoPE patch is module-wide). Its Triton kernels need a GPU: benchmarks/gpu_checks.py
  compares them with the plain computation there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftpack.core.errors import FtpackError
from ftpack.training.cuda_speed import ALLOC_CONF, PADDING_FREE_MODEL_TYPES, plan_fast_path
from ftpack.training.settings import TrainSettings

ROOT = Path(__file__).resolve().parents[1]


def _plan(device="cuda", *, model_type="llama", installed=("liger_kernel",), capability=(9, 0), environ=None,
          bf16=True, **settings):
    resolved = TrainSettings.of(**{"method": "qlora", **settings}).resolved(device)
    return plan_fast_path(resolved, device=device, model_type=model_type, bf16=bf16,
                          available=lambda name: name in installed, liger_types=("llama", "qwen2", "gemma3"),
                          gpu_capability=capability if device == "cuda" else None, environ=environ or {})


def test_auto_on_a_gpu_without_flash_attn():
    path = _plan()
    assert path.liger and "llama" in path.liger_why
    assert path.attention is None and "flash-attn is not installed" in path.attention_why  # transformers' default
    # SDPA would compute the row's whole masked square: padding-free waits for a varlen kernel
    assert not path.padding_free and "variable-length" in path.padding_free_why
    assert path.bf16_base
    assert path.alloc_conf == ALLOC_CONF
    metrics = path.as_metrics()
    assert json.loads(json.dumps(metrics)) == metrics  # build.json takes it as it is
    assert {"liger", "liger_why", "padding_free", "attention", "bf16_base", "alloc_conf"} <= set(metrics)


def test_auto_on_a_gpu_adapts_to_what_is_there():
    flash = _plan(installed=("liger_kernel", "flash_attn"))
    assert flash.attention == "flash_attention_2" and flash.padding_free and "flash_attention_2" in flash.padding_free_why
    old = _plan(installed=("liger_kernel", "flash_attn"), capability=(7, 5))
    assert old.attention is None and "Ampere" in old.attention_why and not old.padding_free
    flex = _plan(attn_implementation="flex_attention")
    assert flex.attention == "flex_attention" and flex.padding_free
    none = _plan(installed=())
    assert not none.liger and "not installed" in none.liger_why
    other = _plan(model_type="gpt_bigcode")
    assert not other.liger and "gpt_bigcode" in other.liger_why
    assert not _plan(per_device_train_batch_size=1, installed=("flash_attn",)).padding_free
    assert not _plan(packing=True, installed=("flash_attn",)).padding_free
    # a hybrid (Mamba, convolution or linear-attention layers) would carry state across examples
    hybrid = _plan(model_type="nemotron_h", installed=("flash_attn",))
    assert not hybrid.padding_free and "not proven" in hybrid.padding_free_why
    assert not _plan(method="lora").bf16_base
    assert not _plan(bf16=False).bf16_base
    kept = _plan(environ={"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"})
    assert kept.alloc_conf is None and "left as it is" in kept.alloc_conf_why


def test_flags_turn_pieces_off_and_refuse_what_cannot_run():
    off = _plan(use_liger_kernel=False, padding_free=False, attn_implementation="eager", qlora_bf16_base=False)
    assert not off.liger and not off.padding_free and off.attention == "eager" and not off.bf16_base
    assert "--no-use-liger-kernel" in off.liger_why and "--no-padding-free" in off.padding_free_why
    assert "--no-qlora-bf16-base" in off.bf16_base_why
    cpu = _plan("cpu", method="lora")
    assert not cpu.liger and not cpu.padding_free and cpu.attention is None and cpu.alloc_conf is None
    assert "slower" in cpu.padding_free_why
    assert _plan("cpu", method="lora", padding_free=True).padding_free  # it runs on a CPU, as asked
    assert _plan(padding_free=True).padding_free  # with SDPA too, as asked
    for settings, words in [(dict(device="cpu", method="lora", use_liger_kernel=True), "needs a CUDA GPU"),
                            (dict(use_liger_kernel=True, installed=()), "not installed"),
                            (dict(use_liger_kernel=True, model_type="gpt_bigcode"), "gpt_bigcode"),
                            (dict(attn_implementation="flash_attention_2"), "flash_attn"),
                            (dict(attn_implementation="flash_attention_3", installed=("flash_attn",)),
                             "flash_attn_interface"),
                            (dict(padding_free=True, model_type="qwen3_5"), "not proven"),
                            (dict(device="cpu", method="lora", attn_implementation="flex_attention"), "GPU-only"),
                            (dict(device="cpu", qlora_bf16_base=True), "bf16 compute")]:
        with pytest.raises(FtpackError) as err:
            _plan(**settings)
        assert words in str(err.value) and err.value.code == 2, (settings, str(err.value))


def test_cli_refuses_liger_on_a_cpu_and_an_unknown_attention(run_cli, tiny_llama, tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                             {"role": "assistant", "content": "Hello."}]}) + "\n")
    for args, expected in [(["--use-liger-kernel"], "needs a CUDA GPU"),
                           (["--attn-implementation", "fast"], "--attn-implementation")]:
        result = run_cli("train", "--base", tiny_llama, "--data", data, "--method", "lora", "--max-steps", "1",
                         "--out", tmp_path / "out", *args)
        assert result.exit_code == 2, result.output
        assert expected in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out" / "adapter").exists()


# -- padding-free is the same training ------------------------------------------------------

def _losses(out: Path) -> list[float]:
    state = json.loads((out / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


def _adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_padding_free_batches_train_exactly_as_padded_ones(tiny_llama, tmp_path, precision):
    import torch

    from test_train import _conversations

    from ftpack.training.train import train

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _conversations()), encoding="utf-8")
    results = {}
    for padding_free in (False, True):
        out = tmp_path / f"pf-{padding_free}"
        results[padding_free] = train(tiny_llama, data, out, method="lora", max_steps=4, per_device_train_batch_size=4,
                                      learning_rate=2e-3, lora_dropout=0.0, save_steps=100, precision=precision,
                                      padding_free=padding_free)
    padded, free = results[False], results[True]
    assert free.metrics["fast_path"]["padding_free"] and not padded.metrics["fast_path"]["padding_free"]
    assert free.metrics["fast_path"]["padding_free_why"] == "as asked"
    # the collated one-row batches were proven against llama.cpp's ids, label by label
    assert free.metrics["batch_check_rows"] == padded.metrics["batch_check_rows"] == 24
    # the same real tokens (TRL counts a padding-free row's length: no padding in it)
    assert free.metrics["train_tokens"] == padded.metrics["train_tokens"]
    tol = 1e-5 if precision == "fp32" else 2e-2
    assert _losses(tmp_path / "pf-True") == pytest.approx(_losses(tmp_path / "pf-False"), rel=tol)
    a, b = _adapter(tmp_path / "pf-True"), _adapter(tmp_path / "pf-False")
    assert a.keys() == b.keys() and a
    for key in a:
        scale = b[key].abs().max().item() or 1.0
        assert (a[key] - b[key]).abs().max().item() <= (1e-4 if precision == "fp32" else 5e-2) * scale, key
    # not trivially equal: the trained adapter moved from its start (B starts at zero)
    assert any(k.endswith("lora_B.weight") and a[k].abs().max() > 0 for k in a)
    assert all(torch.isfinite(t).all() for t in a.values())


def test_padding_free_rows_keep_examples_apart():
    """A one-row batch of two examples gives each example the logits it has alone: the
    attention mask derived from the restarting position ids (SDPA) lets no token see the
    other example. As in training, no KV cache: transformers derives the mask only then."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2,
                                         attn_implementation="sdpa")).eval()
    first, second = torch.randint(0, 64, (1, 7)), torch.randint(0, 64, (1, 5))
    with torch.no_grad():
        alone = [model(input_ids=x, use_cache=False).logits for x in (first, second)]
        row = torch.cat([first, second], dim=1)
        positions = torch.cat([torch.arange(7), torch.arange(5)])[None]
        packed = model(input_ids=row, position_ids=positions, use_cache=False).logits
        leaky = model(input_ids=row, use_cache=False).logits  # no restart: the second example sees the first
    assert torch.allclose(packed[:, :7], alone[0], atol=1e-5)
    assert torch.allclose(packed[:, 7:], alone[1], atol=1e-5)
    assert not torch.allclose(leaky[:, 7:], alone[1], atol=1e-3)


# -- a 4-bit base that keeps its bf16 weights ------------------------------------------------

def test_a_bf16_four_bit_base_computes_what_peft_preparation_computes(tiny_llama):
    """bitsandbytes' NF4 runs on a CPU: the same base, prepared by PEFT (fp32 copies of the
    embeddings, norms, head) and by ftpack (kept bf16), gives the same loss and LoRA
    gradients under bf16 autocast, and ftpack's holds no fp32 weight."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from ftpack.training.train import packed_4bit_layers
    from ftpack.training.trainable import add_lora

    def prepared(keep):
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), quantization_config=bnb, dtype=torch.bfloat16,
                                                     device_map="cpu")
        torch.manual_seed(0)
        return add_lora(model, quantized=True, r=8, alpha=16, dropout=0.0, target_modules=None, dora=False,
                        gradient_checkpointing=True, bf16_base=keep)

    ids = torch.randint(3, 200, (2, 24))
    runs = {}
    for keep in (False, True):
        model = prepared(keep)
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grads = {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}
        frozen = {p.dtype for p in model.parameters() if not p.requires_grad and p.dtype.is_floating_point}
        runs[keep] = loss.item(), grads, frozen, packed_4bit_layers(model)
    (peft_loss, peft_grads, peft_frozen, peft_4bit), (loss, grads, frozen, four_bit) = runs[False], runs[True]
    assert torch.float32 in peft_frozen  # PEFT's copies
    assert frozen == {torch.bfloat16}  # none here
    assert four_bit == peft_4bit == 14  # 2 blocks × 7 projections, packed in 4 bits either way
    assert loss == pytest.approx(peft_loss, rel=2e-2)
    assert grads.keys() == peft_grads.keys() and any(g.abs().max() > 0 for g in grads.values())
    for name, g in grads.items():
        ref = peft_grads[name]
        assert (g - ref).norm() <= 0.1 * ref.norm() + 1e-6, name


# -- Liger -------------------------------------------------------------------------------------

def test_liger_patches_the_model_and_its_module_wide_changes_are_undone(tiny_llama):
    """In a fresh process (Liger's RoPE, norm and MLP patches replace names module-wide):
    every RMSNorm and MLP of the tiny Llama runs Liger's forward, RoPE is Liger's, the
    cross-entropy is left to TRL's fused head; after the undo, transformers' names are back
    and a model loaded afterwards has no Liger module (the trained one keeps its own)."""
    code = f"""
import json
from transformers import AutoModelForCausalLM
import transformers.models.llama.modeling_llama as llama
from ftpack.training.cuda_speed import apply_liger, liger_modules
original = (llama.apply_rotary_pos_emb, llama.LlamaRMSNorm, llama.LlamaMLP)
model = AutoModelForCausalLM.from_pretrained({str(tiny_llama)!r})
before = liger_modules(model)
after, undo = apply_liger(model)
rope = llama.apply_rotary_pos_emb.__module__
restored = undo()
again = AutoModelForCausalLM.from_pretrained({str(tiny_llama)!r})
print(json.dumps({{"before": before, "after": after, "layers": model.config.num_hidden_layers, "rope": rope,
                  "forward": type(model).forward.__module__, "restored": sorted(restored),
                  "originals_back": (llama.apply_rotary_pos_emb, llama.LlamaRMSNorm, llama.LlamaMLP) == original,
                  "again": liger_modules(again), "trained_keeps": liger_modules(model)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["before"] == 0
    assert found["after"] == 3 * found["layers"] + 1  # two norms and the MLP per block, the final norm
    assert found["rope"].startswith("liger_kernel")
    assert found["forward"].startswith("transformers")  # no fused cross-entropy forward
    assert found["restored"] == ["modeling_llama.LlamaMLP", "modeling_llama.LlamaRMSNorm",
                                 "modeling_llama.apply_rotary_pos_emb"]
    assert found["originals_back"] and found["again"] == 0 and found["trained_keeps"] == found["after"]


# -- padding-free is proven per model type -----------------------------------------------------

def _packed_vs_alone(config, attention: str) -> float:
    """Largest |logit difference| between a row packing two examples (position ids restarting)
    and each example run alone, for a random model of ``config``."""
    import torch
    from transformers import AutoModelForCausalLM

    from tiny_archs import randomize

    model = AutoModelForCausalLM.from_config(config, attn_implementation=attention).eval()
    randomize(model)
    torch.manual_seed(1)
    first, second = torch.randint(3, 250, (1, 37)), torch.randint(3, 250, (1, 29))
    with torch.no_grad():
        alone = torch.cat([model(input_ids=x, use_cache=False).logits for x in (first, second)], 1)
        positions = torch.cat([torch.arange(37), torch.arange(29)])[None]
        packed = model(input_ids=torch.cat([first, second], 1), position_ids=positions, use_cache=False).logits
    return (packed - alone).abs().max().item()


def _tiny_config(name: str):
    from tiny_archs import CASES

    facts = {"vocab_size": 32064 if name == "phi3" else 256, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    return CASES[name].config(facts)


ATTENTIONS = ["sdpa", "eager", pytest.param("flex_attention", marks=pytest.mark.slow)]


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # a CPU runs it unfused
def test_every_proven_model_type_keeps_the_examples_of_a_packed_row_apart(attention):
    """The allowlist is exactly the model types proven here: each architecture ftpack
    offers, with each attention, gives a packed row's examples the logits they have alone."""
    from tiny_archs import CASES

    proven = set()
    for name in CASES:
        config = _tiny_config(name)
        if attention == "sdpa" and name == "gemma2":  # Gemma 2 has no SDPA (soft-capping): transformers refuses
            proven.add(config.model_type)
            continue
        diff = _packed_vs_alone(config, attention)
        assert diff < 1e-4, (name, attention, diff)
        proven.add(config.model_type)
    assert proven == PADDING_FREE_MODEL_TYPES


def test_the_summary_names_every_piece_on_a_gpu_and_only_what_was_asked_on_a_cpu():
    line = _plan(installed=("liger_kernel", "flash_attn")).summary()
    for words in ("Liger on", "padding-free on", "attention flash_attention_2", "bf16 4-bit base on",
                  "allocator " + ALLOC_CONF):
        assert words in line, (words, line)
    assert "attention default" in _plan().summary() and "padding-free off" in _plan().summary()
    assert _plan("cpu", method="lora").summary() == ""  # nothing asked: the CPU's own path says itself
    assert _plan("cpu", method="lora", padding_free=True).summary() == "padding-free on (as asked)"


def test_the_allocator_is_told_before_cuda_starts_or_at_run_time_after(monkeypatch):
    """Before CUDA starts the variable is read when it does; once something has started it
    (asking the GPU's name does), torch's own setter applies to the segments made after."""
    import torch

    from ftpack.training.cuda_speed import use_alloc_conf

    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # as before CUDA starts (also on a GPU)
    assert use_alloc_conf(_plan("cpu", method="lora")) is None  # nothing on a CPU
    assert "PYTORCH_CUDA_ALLOC_CONF" not in os.environ
    path = _plan()
    assert use_alloc_conf(path) == "environment"
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == ALLOC_CONF
    # the next run in this process still sees ftpack's own setting as ftpack's, not the user's
    again = plan_fast_path(TrainSettings.of(method="qlora").resolved("cuda"), device="cuda", model_type="llama",
                           bf16=True, available=lambda n: False, liger_types=(), gpu_capability=(9, 0))
    assert again.alloc_conf == ALLOC_CONF
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF")
    told = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch._C, "_accelerator_setAllocatorSettings", told.append)
    assert use_alloc_conf(path) == "runtime" and told == [ALLOC_CONF]
    assert "PYTORCH_CUDA_ALLOC_CONF" not in os.environ
