"""The training code runs unchanged under torchrun: 2 CPU processes (gloo), DDP, and both
ranks end with identical trained weights; only rank 0 writes the outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

DRIVER = """
import hashlib, json, os, sys
from pathlib import Path
from transformers import TrainerCallback
from ftpack.training.train import train

base, data, out = sys.argv[1:4]

class HashWeights(TrainerCallback):
    first_batch = None

    def on_train_begin(self, args, state, control, train_dataloader=None, **kw):
        batch = next(iter(train_dataloader))  # this rank's shard of the data
        self.first_batch = batch["input_ids"].tolist()

    def on_train_end(self, args, state, control, model=None, **kw):
        import torch.distributed as dist

        digests = {n: hashlib.sha256(p.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
                   for n, p in model.named_parameters() if p.requires_grad}
        trained_b = all(p.abs().sum().item() > 0 for n, p in model.named_parameters() if "lora_B" in n)
        rank = os.environ["RANK"]
        Path(out, f"rank{rank}.json").write_text(json.dumps(
            {"world": dist.get_world_size() if dist.is_initialized() else 1, "steps": state.global_step,
             "backend": dist.get_backend() if dist.is_initialized() else None,
             "weights": digests, "trained_b": trained_b, "first_batch": self.first_batch}))

result = train(base, data, out, method="lora", max_steps=4, per_device_train_batch_size=2,
               learning_rate=2e-3, lora_dropout=0.0, save_steps=100, callbacks=[HashWeights()])
"""


def test_torchrun_two_cpu_processes_end_identical(tiny_llama, tmp_path):
    data = tmp_path / "train.jsonl"
    with open(data, "w", encoding="utf-8") as fh:
        for i in range(16):
            fh.write(json.dumps({"messages": [{"role": "user", "content": f"Question {i}?"},
                                              {"role": "assistant", "content": f"Answer {i % 4}."}]}) + "\n")
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER, encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(driver), str(tiny_llama), str(data), str(out)],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 and r["backend"] == "gloo" and r["steps"] == 4 for r in ranks)
    assert ranks[0]["first_batch"] != ranks[1]["first_batch"]  # each rank trained on its own shard...
    assert ranks[0]["weights"] and ranks[0]["weights"] == ranks[1]["weights"]  # ...yet gradients were shared
    assert all(r["trained_b"] for r in ranks)  # LoRA B starts at zero: it really trained
    assert len(ranks[0]["weights"]) == 2 * 7 * 2  # lora_A + lora_B on 7 projections in 2 blocks
    info = json.loads((out / "train_info.json").read_text())
    assert info["steps"] == 4 and (out / "adapter" / "adapter_model.safetensors").is_file()
    assert not list(out.glob("**/*.partial-*"))
