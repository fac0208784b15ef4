"""benchmarks/qlora_gpu.py runs where CI runs: its --tiny mode times the same three
paths' code on a tiny model (a CPU: no VRAM, no Unsloth) and writes the result JSON the
GPU run will commit, with every key the issue names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

KEYS = ("benchmark", "device", "model_shape", "steps", "tokens_per_s_baseline", "tokens_per_s",
        "tokens_per_s_unsloth", "speedup", "peak_vram_gib_baseline", "peak_vram_gib")


def test_variants_parse_into_train_settings():
    from qlora_gpu import parse_variant

    assert parse_variant("padded:padding_free=false,lora_r=8") == ("padded", {"padding_free": False, "lora_r": 8})
    assert parse_variant("eager:attn_implementation=eager,learning_rate=0.001") == (
        "eager", {"attn_implementation": "eager", "learning_rate": 0.001})
    assert parse_variant("plain") == ("plain", {})


@pytest.mark.slow
def test_the_gpu_benchmark_runs_tiny_and_writes_its_result(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/qlora_gpu.py", "--tiny", "--steps", "3", "--warmup", "4", "--profile",
                           "--results-dir", str(tmp_path), "--variant", "padding-free:padding_free=true"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (written,) = tmp_path.glob("qlora_gpu-tiny-*.json")
    result = json.loads(written.read_text())
    assert set(KEYS) <= set(result)
    assert result["benchmark"] == "qlora_gpu" and result["model_shape"] == "tiny" and result["steps"] == 3
    runs = result["runs"]
    for name in ("baseline", "ftpack", "padding-free"):
        run = runs[name]
        assert "error" not in run, run
        assert run["timed_steps"] == 3 and len(run["step_seconds"]) == 7
        # two warm-up steps profiled (never timed ones): where their time went
        assert run["profile"]["steps"] == 2 and run["profile"]["cpu_ops"] > 100 and "aten::" in run["profile"]["table"]
        # the real tokens of 3 batches of 8 demo conversations (a few dozen tokens each)
        assert 8 * 3 * 20 < run["tokens"] < 8 * 3 * 512, run
        assert run["tokens_per_s"] == pytest.approx(run["tokens"] / run["seconds"], rel=1e-2)
    assert result["speedup"] == pytest.approx(result["tokens_per_s"] / result["tokens_per_s_baseline"], rel=1e-2)
    assert runs["ftpack"]["fast_path"]["device"] == "cpu"
    assert runs["padding-free"]["fast_path"]["padding_free"] and runs["padding-free"]["overrides"] == {
        "padding_free": True}
    assert result["tokens_per_s_unsloth"] is None and "CUDA" in runs["unsloth"]["error"]
    assert result["checks"]["padding_free_sdpa"]["ok"]
    assert "skipped" in result["checks"]["liger"]


@pytest.mark.slow
def test_the_whole_build_benchmark_runs_tiny_and_reports_stages_and_memory(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/build_gpu.py", "--tiny", "--max-steps", "30",
                           "--results-dir", str(tmp_path), "--workdir", str(tmp_path / "work")],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (written,) = tmp_path.glob("build_gpu-tiny-*.json")
    result = json.loads(written.read_text())
    for stage in ("data", "train", "convert", "quantize", "verify", "modelfile"):
        assert result["stage_status"][stage] == "done", result["stage_status"]
        assert result["stage_seconds"][stage] >= 0
    assert "register" not in result["stage_status"]  # --no-register: no Ollama there
    assert result["stage_seconds"]["train"] > 0.5  # 30 real optimizer steps
    manifest = json.loads((tmp_path / "work" / "build" / "build.json").read_text())
    assert "Q4_K_M" in manifest["stages"]["quantize"]["main_output"]
    # the sampler saw the build's processes: more than an idle interpreter, less than this machine
    assert 0.2 < result["peak_host_rss_gib"] < 24
    assert result["peak_vram_gib"] is None  # no GPU here
    assert result["verify"]["stopped"] is True and result["train"]["steps"] == 30


def test_the_device_scripts_parse():
    for script in ("benchmarks/gpu/device.sh", "benchmarks/gpu/wheels.sh"):
        proc = subprocess.run(["bash", "-n", script], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, (script, proc.stderr)


@pytest.mark.slow
def test_the_gpu_training_check_compares_two_processes():
    """benchmarks/gpu_checks.py's training check, forced on a CPU: the fast arm (here only
    padding-free: Liger and the bf16 base need a GPU) and the plain arm run in their own
    processes and agree; on a GPU the same code compares the whole fast path."""
    from gpu_checks import STEPS, training_check

    found = training_check(force=True)["training"]
    assert found["ok"], found
    assert len(found["losses_fast"]) == len(found["losses_plain"]) == STEPS
    assert found["fast_path"]["padding_free"] and not found["plain_path"]["padding_free"]
    assert found["worst_relative_loss_diff"] < 1e-3  # fp32 QLoRA compute on a CPU: near exact
