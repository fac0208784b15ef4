"""The training code runs unchanged under a launcher: 2 CPU processes (gloo).

- DDP (torchrun): both ranks end with identical trained weights; only rank 0 writes.
- FSDP (the documented full fine-tuning flow, examples/vicuna-7b-full-fsdp.toml with
  examples/accelerate-fsdp.yaml): every weight is sharded across the ranks, and the
  saved model/ holds the gathered full weights.

What FSDP on CPU really runs (accelerate 1.15, torch 2.14, transformers 5.24): accelerate
picks its ``MULTI_CPU`` mode whenever no accelerator is present and then ignores the FSDP
plugin (plain DDP, silently). The FSDP test therefore adds a ``sitecustomize`` to the two
worker processes that lets accelerate's state say FSDP on CPU, exactly as it does on GPUs;
everything else is the real thing: ``accelerate launch`` with the shipped YAML (starting
the workers through torch's elastic launcher, i.e. torchrun), ``python -m ftpack train``
with the shipped TOML, PyTorch FSDP2 (``fully_shard``, DTensor shards, activation
checkpointing) over gloo, accelerate's gather of the full state dict and ftpack's save.
FSDP1 (``fsdp_version: 1``) cannot run on CPU through accelerate at all (its plugin
demands a GPU for ``sync_module_states``; without that, torch rejects device ``cpu:0``).
"""

from __future__ import annotations

import hashlib
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


# Loaded by every worker process (PYTHONPATH) before ftpack: accelerate uses its FSDP mode
# on CPU as it would on GPUs, and a callback records, per rank, what FSDP made of the
# weights and the full weights gathered from the shards (a collective: every rank joins).
SITECUSTOMIZE = """
import os

if os.environ.get("FTPACK_TEST_CPU_FSDP") == "1" and "LOCAL_RANK" in os.environ:
    import hashlib, json
    from pathlib import Path

    import accelerate.state as st
    import transformers
    from accelerate.utils import DistributedType

    _state_init = st.AcceleratorState.__init__

    def _fsdp_on_cpu(self, *a, fsdp_plugin=None, **kw):
        _state_init(self, *a, fsdp_plugin=fsdp_plugin, **kw)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            st.PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    st.AcceleratorState.__init__ = _fsdp_on_cpu

    class ShardProbe(transformers.TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kw):
            import torch.distributed as dist
            from torch.distributed.tensor import DTensor

            params = {}
            for name, p in model.named_parameters():
                full = p.full_tensor() if isinstance(p, DTensor) else p
                params[name.replace("_checkpoint_wrapped_module.", "")] = {
                    "dtensor": isinstance(p, DTensor),
                    "local": (p.to_local() if isinstance(p, DTensor) else p).numel(), "full": full.numel(),
                    "sha256": hashlib.sha256(full.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()}
            Path(os.environ["FTPACK_TEST_PROBE"], f"rank{os.environ['RANK']}.json").write_text(json.dumps({
                "world": dist.get_world_size(), "backend": dist.get_backend(), "steps": state.global_step,
                "model_class": type(model).__name__, "params": params}))

    _trainer_init = transformers.Trainer.__init__

    def _with_probe(self, *a, **kw):
        _trainer_init(self, *a, **kw)
        self.add_callback(ShardProbe())

    transformers.Trainer.__init__ = _with_probe
"""


def _errors(log: str) -> str:
    """The distinct error lines of a failed launch (the ranks' tracebacks repeat them)."""
    lines = [ln.strip() for ln in log.splitlines() if ("Error" in ln or "error:" in ln) and "kernels" not in ln]
    return "\n".join(dict.fromkeys(lines)) or log[-3000:]


def _tensor_digests(path: Path) -> dict[str, str]:
    from safetensors.torch import load_file

    return {k: hashlib.sha256(t.float().contiguous().numpy().tobytes()).hexdigest()
            for k, t in load_file(str(path)).items()}


def test_fsdp_full_finetune_gathers_sharded_weights(tiny_llama, tmp_path, run_cli):
    """examples/vicuna-7b-full-fsdp.toml on the tiny Llama: step 1 (train) on 2 CPU ranks
    with FSDP2, step 2 (package) as the example's header says."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    probe, out = tmp_path / "probe", tmp_path / "builds" / "tiny-full" / "train"
    probe.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": "", "FTPACK_TEST_CPU_FSDP": "1", "FTPACK_TEST_PROBE": str(probe)}
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch",
           "--config_file", str(REPO / "examples" / "accelerate-fsdp.yaml"), "--num_processes", "2",
           "--main_process_port", "0",
           "-m", "ftpack", "train", "--config", str(REPO / "examples" / "vicuna-7b-full-fsdp.toml"),
           "--base", str(tiny_llama), "--data", str(REPO / "examples" / "qa.sharegpt.json"),
           "--max-steps", "2", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, _errors(proc.stdout + proc.stderr)

    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["world"] == 2 and r["backend"] == "gloo" and r["steps"] == 2
        assert r["model_class"] == "FSDPLlamaForCausalLM"  # FSDP2's fully_shard wrapped the model
        assert all(p["dtensor"] for p in r["params"].values())
        # every weight matrix is split between the two ranks: each holds half of it
        assert all(p["local"] * 2 == p["full"] for p in r["params"].values())
    gathered = {n: p["sha256"] for n, p in ranks[0]["params"].items()}
    assert gathered == {n: p["sha256"] for n, p in ranks[1]["params"].items()}

    model_dir = out / "model"
    saved = _tensor_digests(model_dir / "model.safetensors")
    assert saved == gathered  # rank 0 wrote the full weights the ranks trained together
    base = _tensor_digests(tiny_llama / "model.safetensors")
    assert set(base) == set(saved) and all(saved[k] != base[k] for k in base)  # every tensor trained

    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]  # not the FSDP wrapper class
    from transformers import AutoModelForCausalLM
    import torch

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 5, 9, 3]])).logits).all()
    info = json.loads((out / "train_info.json").read_text())
    assert info["method"] == "full" and info["steps"] == 2
    assert not list(out.glob("**/*.partial-*"))

    # step 2: the packaging commands of the example's header
    f16, q4 = out / "tiny-full.f16.gguf", out / "tiny-full.Q4_K_M.gguf"
    for args in (["convert", model_dir, "-o", f16], ["quantize", f16, "--type", "Q4_K_M"],
                 ["modelfile", q4, "--template", "vicuna_v1.1", "--num-ctx", "2048", "-o", out / "Modelfile"]):
        result = run_cli(*args)
        assert result.exit_code == 0, result.output
    assert q4.stat().st_size > 0 and f"FROM ./{q4.name}" in (out / "Modelfile").read_text()


def test_other_ranks_write_nothing_into_out_before_training(tiny_llama, tmp_path):
    """Under a launcher only rank 0 checks --out and writes there before training; a rank
    that wrote its data split there first made rank 0's check refuse the folder (a race seen
    in CI). Rank 1 alone, with no rendezvous to join: it prepares its data, then fails when
    joining the process group, and --out must still not exist."""
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(REPO), RANK="1", LOCAL_RANK="1", WORLD_SIZE="2", CUDA_VISIBLE_DEVICES="",
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "ftpack", "train", "--base", str(tiny_llama),
                           "--data", str(REPO / "examples" / "qa.sharegpt.json"), "--max-steps", "1",
                           "--out", str(out)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0  # no rank 0 to meet
    assert "MASTER_ADDR" in proc.stdout + proc.stderr  # it got as far as joining the process group
    assert not out.exists()
