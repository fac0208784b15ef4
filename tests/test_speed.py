"""The CPU fast path of training (ftpack/training/speed.py) on the tiny Llama: each piece
computes what the plain path computes, bf16 is chosen only where it pays, the choice is
recorded, and the loss curve of the fast path stays close to fp32's.

The bound for the loss curves (also in docs/benchmarks.md "Training speed on CPU"): same data, same seed,
LoRA r16, 12 steps at lr 2e-3 on the tiny random Llama, bf16 autocast vs fp32: every
logged loss within 8% of fp32's and the mean difference within 3% of the mean loss
(measured: at most 5.5%, mean 0.8%). On SmolLM2-135M with the demo data and config
(10 steps, seed 42) bf16 stayed within 1.7% of fp32 at every step, 0.4% on average.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ftpack.core.errors import FtpackError


def _lora_model(tiny_llama, attn_implementation: str = "sdpa"):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32,
                                                 attn_implementation=attn_implementation)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():  # LoRA B starts at zero: give the adapters a real effect
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    return model.train()


def _batch():
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 400, (3, 14), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    mask[2, 6:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :5] = -100  # a prompt: no loss there
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _lora_grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_cpu_lm_head_gives_the_models_own_loss_and_gradients(tiny_llama):
    """Only labelled rows go through the head, gradient computed in the forward: the loss
    and every LoRA gradient equal transformers' own cross-entropy on the full logits."""
    import torch
    from trl.trainer.utils import add_fused_lm_head

    from ftpack.training.speed import install_cpu_lm_head

    model = _lora_model(tiny_llama)
    batch = _batch()
    reference = model(**batch).loss
    reference.backward()
    expected = _lora_grads(model)
    model.zero_grad()

    base = model.get_base_model()
    add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))  # what SFTTrainer does
    assert install_cpu_lm_head(base)
    out = model(**batch, fused_lm_head=True)
    loss = -out.log_probs.sum() / out.label_mask.sum()  # SFTTrainer.compute_loss
    loss.backward()
    assert torch.allclose(loss, reference, rtol=1e-5, atol=1e-6), (loss, reference)
    assert torch.allclose(out.loss, reference, rtol=1e-5, atol=1e-6)
    for name, grad in _lora_grads(model).items():
        assert torch.allclose(grad, expected[name], rtol=1e-4, atol=1e-7), name
    # TRL's metrics come out too: entropy and top-1 on the labelled positions only
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1].float()
    mask = out.label_mask
    probs = logits.softmax(-1)
    assert torch.allclose(out.entropy[mask], -(probs * probs.log()).sum(-1)[mask], atol=1e-4)
    assert out.is_top1[mask].eq(logits.argmax(-1)[mask] == batch["labels"][:, 1:][mask]).all()
    assert not out.entropy[~mask].any() and not out.log_probs[~mask].any()


def test_cpu_lm_head_under_bf16_autocast_stays_close(tiny_llama):
    import torch
    from trl.trainer.utils import add_fused_lm_head

    from ftpack.training.speed import install_cpu_lm_head

    model = _lora_model(tiny_llama)
    batch = _batch()
    reference = model(**batch).loss
    base = model.get_base_model()
    add_fused_lm_head(base, outputs=("log_probs",))
    install_cpu_lm_head(base)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch, fused_lm_head=True)
    assert out.log_probs.dtype == torch.float32
    assert abs(out.loss.item() - reference.item()) < 0.02 * reference.item()


def test_cpu_lm_head_leaves_a_trained_head_to_trl(tiny_llama):
    """sft/full train the head: its weight needs a gradient, which only TRL's head gives."""
    from trl.trainer.utils import add_fused_lm_head
    from transformers import AutoModelForCausalLM

    from ftpack.training.speed import install_cpu_lm_head

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    add_fused_lm_head(model)
    install_cpu_lm_head(model)
    out = model(**_batch(), fused_lm_head=True)
    out.loss.backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0


def test_cpu_attention_equals_sdpa_for_padded_left_padded_and_packed_batches(tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM

    from ftpack.training import speed

    name = speed.register_cpu_attention()
    sdpa = AutoModelForCausalLM.from_pretrained(str(tiny_llama), attn_implementation="sdpa").eval()
    ours = AutoModelForCausalLM.from_pretrained(str(tiny_llama), attn_implementation=name).eval()
    ids = torch.randint(5, 400, (3, 12), generator=torch.Generator().manual_seed(2))
    right = torch.ones_like(ids)
    right[1, 8:] = 0
    left = torch.ones_like(ids)
    left[2, :4] = 0
    with torch.no_grad():
        for mask in (right, left):
            a = sdpa(input_ids=ids, attention_mask=mask, use_cache=False).logits
            b = ours(input_ids=ids, attention_mask=mask, use_cache=False).logits
            assert torch.allclose(a[mask.bool()], b[mask.bool()], atol=1e-4)
        # packed: two sequences in one row, told apart by their position ids
        packed = ours(input_ids=ids[:1], position_ids=torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7]]),
                      use_cache=False).logits
        second = sdpa(input_ids=ids[:1, 4:], use_cache=False).logits
        assert torch.allclose(packed[0, 4:], second[0], atol=1e-4)
        # long batches go to SDPA (computed in fp32 under autocast): same answer
        eager_limit, speed.EAGER_MAX_SCORES = speed.EAGER_MAX_SCORES, 0
        try:
            c = ours(input_ids=ids, attention_mask=right, use_cache=False).logits
        finally:
            speed.EAGER_MAX_SCORES = eager_limit
        assert torch.allclose(c[right.bool()], sdpa(input_ids=ids, attention_mask=right).logits[right.bool()],
                              atol=1e-4)


def test_bf16_storage_of_frozen_weights_changes_no_result_under_autocast(tiny_llama):
    """Autocast casts each frozen fp32 weight to bf16 before its matmul; storing it in bf16
    and skipping PEFT's input casts gives bit-identical losses and LoRA gradients."""
    import torch

    from ftpack.training.speed import prepare_lora_for_bf16_autocast

    plain, lean = _lora_model(tiny_llama), _lora_model(tiny_llama)
    assert prepare_lora_for_bf16_autocast(lean) == 2 * 7  # two blocks × q, k, v, o, gate, up, down
    assert all(p.dtype == torch.float32 for n, p in lean.named_parameters() if p.requires_grad)
    batch = _batch()
    losses = []
    for model in (plain, lean):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        losses.append(loss)
    assert torch.equal(losses[0], losses[1])
    lean_grads = _lora_grads(lean)
    assert all(torch.equal(g, lean_grads[n]) for n, g in _lora_grads(plain).items())


def test_cpu_lm_head_keeps_its_bf16_copy_until_the_head_changes(tiny_llama):
    """The frozen head is lowered to bf16 once, not every step; changed in place, it is
    lowered again (the loss follows the new weight)."""
    import torch
    from trl.trainer.utils import add_fused_lm_head

    from ftpack.training.speed import install_cpu_lm_head

    model = _lora_model(tiny_llama)
    base = model.get_base_model()
    add_fused_lm_head(base, outputs=("log_probs",))
    install_cpu_lm_head(base)
    batch = _batch()
    copies = []
    real_to = torch.Tensor.to

    def counting_to(self, *args, **kwargs):
        out = real_to(self, *args, **kwargs)
        if self is not out and self.shape == base.lm_head.weight.shape:
            copies.append(out)
        return out

    def loss():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(**batch, fused_lm_head=True).loss.item()

    torch.Tensor.to = counting_to
    try:
        first, second = loss(), loss()
        assert first == second and len(copies) == 1
        with torch.no_grad():
            base.lm_head.weight.mul_(1.5)
        changed = loss()
        assert len(copies) == 2 and changed != first
    finally:
        torch.Tensor.to = real_to
    fresh = _lora_model(tiny_llama)
    with torch.no_grad():
        fresh.get_base_model().lm_head.weight.mul_(1.5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert abs(fresh(**batch).loss.item() - changed) < 0.02 * changed


def test_precision_choice(monkeypatch):
    import torch

    from ftpack.training import speed

    assert speed.resolve_precision("fp32", "cpu") == ("fp32", "as asked")
    assert speed.resolve_precision("BF16", "cpu") == ("bf16", "as asked")
    with pytest.raises(FtpackError) as err:
        speed.resolve_precision("fp16", "cpu")
    assert err.value.code == 2
    # on a native-bf16 CPU the measured matmul speeds decide (the old rule picked fp32 on every CPU)
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: True)
    speeds = {torch.float32: 100.0, torch.bfloat16: 210.0}
    monkeypatch.setattr(speed, "matmul_gflops", lambda dtype, **kw: speeds[dtype])
    precision, why = speed.resolve_precision("auto", "cpu")
    assert precision == "bf16" and "2.1x fp32" in why, why
    speeds[torch.bfloat16] = 90.0
    assert speed.resolve_precision("auto", "cpu")[0] == "fp32"
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: False)
    assert speed.resolve_precision("auto", "cpu") == ("fp32", "this CPU has no native bf16 (AVX512-BF16/AMX)")


def test_threads_are_the_physical_cores_unless_the_user_chose(monkeypatch):
    import torch

    from ftpack.training import speed

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        assert speed.use_physical_cores() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
        assert speed.use_physical_cores() == speed.physical_cores() >= 1
    finally:
        torch.set_num_threads(before)


def _curve(folder: Path) -> list[float]:
    with open(folder / "loss.csv", encoding="utf-8") as fh:
        return [float(row["loss"]) for row in csv.DictReader(fh) if row["loss"]]


def test_fast_path_loss_curve_agrees_with_fp32_and_the_choice_is_recorded(tiny_llama, tmp_path):
    from test_train import _conversations

    from ftpack.training.train import train

    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _conversations()), encoding="utf-8")
    runs = {}
    for precision in ("fp32", "bf16"):
        runs[precision] = train(tiny_llama, data, tmp_path / precision, method="lora", max_steps=12,
                                per_device_train_batch_size=4, learning_rate=2e-3, lora_dropout=0.0, seed=1,
                                precision=precision)
        metrics = runs[precision].metrics
        assert metrics["precision"] == metrics["settings"]["precision"] == precision
        assert metrics["tokens_per_second"] > 0 and metrics["train_tokens"] > 0
    fp32, bf16 = _curve(tmp_path / "fp32"), _curve(tmp_path / "bf16")
    assert len(fp32) == len(bf16) == 12
    assert fp32[-1] < 0.5 * fp32[0]  # it learns
    diffs = [abs(a - b) for a, b in zip(fp32, bf16)]
    assert max(d / a for d, a in zip(diffs, fp32)) <= 0.08, list(zip(fp32, bf16))
    assert sum(diffs) / len(diffs) <= 0.03 * sum(fp32) / len(fp32), list(zip(fp32, bf16))


def test_auto_precision_is_recorded_with_its_reason(tiny_llama, tmp_path):
    from test_train import _conversations

    from ftpack.training.speed import cpu_has_native_bf16
    from ftpack.training.train import train

    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _conversations(8)), encoding="utf-8")
    result = train(tiny_llama, data, tmp_path / "run", method="lora", max_steps=2, per_device_train_batch_size=4)
    m = result.metrics
    assert m["settings"]["precision"] == m["precision"]  # in the fingerprint and build.json, not "auto"
    # the choice follows the CPU, and its reason says why (both branches assert something)
    if not cpu_has_native_bf16():
        assert (m["precision"], m["precision_reason"]) == ("fp32", "this CPU has no native bf16 (AVX512-BF16/AMX)")
    elif m["precision"] == "bf16":
        assert m["precision_reason"].startswith("native bf16 CPU: bf16 matmuls")
    else:
        assert m["precision"] == "fp32" and m["precision_reason"].startswith("bf16 matmuls are not faster here")
    assert m["threads"] >= 1


def test_cpu_attention_runs_gemma2_soft_capping_like_eager(tmp_path):
    """Gemma 2 soft-caps attention scores, which SDPA cannot: the model's own eager code runs
    it (SDPA refused it, so bf16 LoRA training of Gemma 2 failed on CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, Gemma2Config

    from ftpack.training import speed

    config = Gemma2Config(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=4,
                          attn_logit_softcapping=5.0, final_logit_softcapping=30.0)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    name = speed.register_cpu_attention()
    eager = AutoModelForCausalLM.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    ours = AutoModelForCausalLM.from_pretrained(str(tmp_path), attn_implementation=name).train()
    ids = torch.randint(5, 300, (2, 10), generator=torch.Generator().manual_seed(3))
    out = ours(input_ids=ids, labels=ids, use_cache=False)
    out.loss.backward()  # trains
    with torch.no_grad():
        assert torch.allclose(ours.eval()(input_ids=ids, use_cache=False).logits,
                              eager(input_ids=ids, use_cache=False).logits, atol=1e-5)



def test_bf16_lora_base_lets_the_weight_file_go(tiny_llama):
    """With the projections copied to bf16, the embeddings and norms are copied too, so the
    memory-mapped safetensors file (every page read while loading) is no longer held."""
    import gc

    from ftpack.training.settings import TrainSettings
    from ftpack.training.trainable import make_trainable

    def mapped() -> bool:
        return any(str(tiny_llama) in line for line in Path("/proc/self/maps").read_text().splitlines())

    settings = TrainSettings.from_config({"method": "lora", "lora_dropout": 0.0}).resolved("cpu")
    lean = make_trainable(Path(tiny_llama), settings, device="cpu", bf16=True)
    gc.collect()
    assert not mapped()
    plain = make_trainable(Path(tiny_llama), settings, device="cpu", bf16=False)
    assert mapped()  # fp32 training uses the weights straight from the file
    assert lean is not plain
