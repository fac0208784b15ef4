"""A whole `ftpack build` of a 7B-class model: seconds per stage, peak VRAM and host RSS.

A synthetic Llama of 7B shape (benchmarks/qlora_gpu.py's: random bf16 weights, the tests'
tokenizer) is built by ``ftpack build`` as a user would run it, in its own process:
data → train (QLoRA on a GPU: ``--method auto``) → convert → quantize (Q4_K_M, with the
importance matrix computed from the data) → verify (llama.cpp answers an eval question and
must stop) → modelfile; not registered (no Ollama server there). The data are the
end-to-end tests' "Say hello to NAME" conversations, which a model learns to answer and
end in a few dozen steps; a random 7B may still fail verify, and the result says so.

While it runs, a sampler reads the build's process tree's resident memory (/proc) and the
GPU's used memory (nvidia-smi) every 0.2 s. Per-stage seconds come from build.json.
Writes one JSON per run to ``--results-dir`` (default on a GPU: benchmarks/results).

    python benchmarks/build_gpu.py [--max-steps 60] [--tiny] [--results-dir DIR]

``--tiny`` builds the tests' tiny Llama instead (a CPU works): tests/test_benchmarks.py.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def gpu_used_bytes() -> int | None:
    """Memory in use on GPU 0 by every process (nvidia-smi), or None without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return int(out.stdout.strip().splitlines()[0]) * 2**20 if out.returncode == 0 and out.stdout.strip() else None


class Sampler(threading.Thread):
    """Peaks of the process tree's RSS and the GPU's used memory (above its use at start)."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak_rss = 0
        self.gpu_at_start = gpu_used_bytes()
        self.peak_gpu = self.gpu_at_start
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak_rss = max(self.peak_rss, tree_rss(self.pid))
            used = gpu_used_bytes() if self.gpu_at_start is not None else None
            if used is not None:
                self.peak_gpu = max(self.peak_gpu or 0, used)
            self.done.wait(self.every)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-steps", type=int, default=60)
    ap.add_argument("--quant", default="Q4_K_M")
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny Llama instead of the 7B shape")
    ap.add_argument("--results-dir", type=Path, default=None)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the base and the build here")
    args = ap.parse_args(argv)

    import torch

    from qlora_gpu import SHAPE_7B, result_path, synthetic_base, write_result
    from test_build_e2e import write_hello_data
    from tiny_model import build_tiny_llama

    cuda = torch.cuda.is_available()
    results_dir = args.results_dir or (ROOT / "benchmarks" / "results" if cuda else None)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ftpack-build-gpu-"))
    t = time.perf_counter()
    base = build_tiny_llama(work / "tiny") if args.tiny else synthetic_base(work, SHAPE_7B)
    made = round(time.perf_counter() - t, 1)
    if cuda:
        torch.cuda.empty_cache()
    data = write_hello_data(work / "hello.jsonl")
    out = work / "build"
    cmd = [sys.executable, "-m", "ftpack", "--json", "build", "hello-7b", "--base", str(base), "--data", str(data),
           "--out", str(out), "--max-steps", str(args.max_steps), "--learning-rate", "5e-3",
           "--max-seq-length", "64", "--per-device-train-batch-size", "4", "--quant", args.quant, "--no-register"]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])))
    sampler = Sampler(proc.pid)
    sampler.start()
    stdout, stderr = proc.communicate()
    sampler.done.set()
    sampler.join()
    wall = round(time.perf_counter() - t, 1)

    manifest = json.loads((out / "build.json").read_text()) if (out / "build.json").is_file() else {}
    stages = manifest.get("stages", {})
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    final = next((e for e in reversed(events) if e.get("event") == "final"), {})
    verify = stages.get("verify", {}).get("metrics", {})
    train = stages.get("train", {}).get("metrics", {})
    gpu_peak = (sampler.peak_gpu - sampler.gpu_at_start) if sampler.peak_gpu is not None else None
    result = {
        "benchmark": "build_gpu", "date": _dt.date.today().isoformat(),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "model_shape": "tiny" if args.tiny else "7B", "quant": args.quant, "max_steps": args.max_steps,
        "exit_code": proc.returncode, "final": final.get("message"), "wall_s": wall, "base_written_s": made,
        "stage_seconds": {k: v.get("seconds") for k, v in stages.items()},
        "stage_status": {k: v.get("status") for k, v in stages.items()},
        "peak_vram_gib": None if gpu_peak is None else round(gpu_peak / 2**30, 2),
        "peak_host_rss_gib": round(sampler.peak_rss / 2**30, 2),
        "train": {k: train.get(k) for k in ("method", "steps", "first_train_loss", "final_train_loss",
                                            "tokens_per_second", "precision", "fast_path")},
        "verify": verify,
        "command": "python benchmarks/build_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "stderr_tail": stderr[-2000:] if proc.returncode else "",
    }
    print(json.dumps(result, indent=2))
    path = result_path(results_dir, f"build_gpu-{result['model_shape']}", result["device"])
    if path is not None:
        write_result(result, path)
        print(f"wrote {path}", file=sys.stderr)
    return 0 if stages.get("quantize", {}).get("status") == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
