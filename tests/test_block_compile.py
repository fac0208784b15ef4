"""--torch-compile (ftpack/training/block_compile.py): when it is on, and that the compiled
decoder blocks compute what the eager blocks compute, as one graph shared by every block,
used only for the training calls it was made for."""

from __future__ import annotations

import json
import os

import pytest

from ftpack.core.errors import FtpackError
from ftpack.training.block_compile import AUTO_MIN_STEPS, c_compiler, resolve_torch_compile

needs_compiler = pytest.mark.skipif(c_compiler() is None, reason="torch.compile needs a C++ compiler")


def _resolve(asked=None, **over):
    kw = dict(method="lora", device="cpu", bf16=True, world=1, steps=AUTO_MIN_STEPS, checkpointing=False)
    kw.update(over)
    return resolve_torch_compile(asked, **kw)


@needs_compiler
def test_auto_compiles_long_bf16_lora_runs_on_a_cpu_only():
    assert _resolve()[0] is True
    for over in (dict(device="cuda"), dict(bf16=False), dict(method="full"), dict(method="qlora"),
                 dict(dora=True), dict(world=2), dict(steps=AUTO_MIN_STEPS - 1), dict(checkpointing=True)):
        on, why = _resolve(**over)
        assert on is False and why, over
    assert _resolve(True, device="cuda", bf16=False, method="full", steps=1)[0] is True  # asked for: on
    assert _resolve(False)[0] is False


def test_without_a_compiler_auto_is_off_and_asking_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    assert c_compiler() is None
    on, why = _resolve()
    assert on is False and "C++ compiler" in why
    with pytest.raises(FtpackError) as info:
        _resolve(True)
    assert "build-essential" in info.value.hint


def test_checkpointing_and_compile_asked_together_is_refused():
    with pytest.raises(FtpackError, match="gradient checkpointing"):
        _resolve(True, checkpointing=True)


def _lora_model(tiny_llama):
    """The training path's own model: bf16-stored frozen projections, ftpack's CPU attention."""
    import torch

    from ftpack.training.settings import TrainSettings
    from ftpack.training.trainable import make_trainable

    settings = TrainSettings.of(method="lora", lora_dropout=0.0).resolved("cpu")  # r16, alpha 32 as in the run below
    model = make_trainable(tiny_llama, settings, device="cpu", bf16=True)
    model.config.use_cache = False
    torch.manual_seed(0)
    for name, p in model.named_parameters():  # LoRA B starts at zero: give the adapters a real effect
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    return model.train()


def _batch(rows: int = 3, length: int = 14, padded: bool = True):
    import torch

    g = torch.Generator().manual_seed(rows * 100 + length)
    ids = torch.randint(5, 400, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    if padded:
        mask[-1, length // 2:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _loss_and_grads(model, batch):
    import torch

    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.slow
@needs_compiler
def test_compiled_blocks_compute_what_eager_blocks_compute_in_one_shared_graph(tiny_llama, monkeypatch):
    import torch
    from torch._dynamo.utils import counters

    from ftpack.core.locations import cache_dir
    from ftpack.training.block_compile import compile_decoder_blocks

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # restored afterwards
    torch._dynamo.reset()
    counters.clear()
    eager, compiled = _lora_model(tiny_llama), _lora_model(tiny_llama)
    blocks = compile_decoder_blocks(compiled.get_base_model())
    assert blocks == len(compiled.get_base_model().model.layers) >= 2
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache_dir() / "torch-compile")  # kept for later runs

    # Training steps of other batch and sequence sizes: the same results, from one graph.
    for rows, length in ((3, 14), (4, 9), (2, 21)):
        batch = _batch(rows, length)
        (a, ga), (b, gb) = _loss_and_grads(eager, batch), _loss_and_grads(compiled, batch)
        assert b == pytest.approx(a, rel=2e-2), (rows, length)
        for name in ga:
            assert torch.allclose(ga[name], gb[name], rtol=5e-2, atol=2e-3), name
    assert counters["stats"]["unique_graphs"] == 1  # every block (but the first) and every shape
    assert any(p.grad is not None for n, p in compiled.named_parameters() if "layers.0." in n)

    # Calls the graph was not made for run eagerly instead of compiling another one.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        _ = compiled.eval()(**_batch()).logits
    compiled.train()
    _loss_and_grads(compiled, _batch(rows=1))  # one row: size 1 would be a new specialization
    _loss_and_grads(compiled, _batch(padded=False))  # no padding: transformers passes no mask
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.slow
@needs_compiler
def test_compiled_training_loss_curve_agrees_with_eager_and_is_recorded(tiny_llama, tmp_path):
    from test_speed import _curve
    from test_train import _conversations

    from ftpack.training.train import train

    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _conversations()), encoding="utf-8")
    runs = {}
    for compiled in (False, True):
        runs[compiled] = train(tiny_llama, data, tmp_path / str(compiled), method="lora", max_steps=12,
                               per_device_train_batch_size=4, learning_rate=2e-3, lora_dropout=0.0, seed=1,
                               precision="bf16", torch_compile=compiled)
    m = runs[True].metrics
    assert m["torch_compile"] is True and "decoder blocks" in m["torch_compile_reason"]
    assert runs[False].metrics["torch_compile"] is False
    assert "torch_compile" not in m["settings"]  # bookkeeping: not part of what is learned
    eager, fused = _curve(tmp_path / "False"), _curve(tmp_path / "True")
    assert len(eager) == len(fused) == 12
    diffs = [abs(a - b) for a, b in zip(eager, fused)]
    assert max(d / a for d, a in zip(diffs, eager)) <= 0.01, list(zip(eager, fused))  # measured 0.12%
    assert sum(diffs) / len(diffs) <= 0.005 * sum(eager) / len(eager), list(zip(eager, fused))  # 0.04%
