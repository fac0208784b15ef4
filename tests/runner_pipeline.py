"""A small real pipeline for the stage-runner tests (plain files, no models).

Run as a script it builds ``argv[1]`` (the build dir) from ``argv[2]`` (the data
file); with ``--stall`` the convert stage writes half its output, prints READY and
waits on stdin, so a test can kill it mid-write at a known point.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ftpack.core.atomic import atomic_path, write_text
from ftpack.core.runner import Stage, StageResult, run_stages
from ftpack.settings import build_config

STALL = {"on": False}


def _data(ctx):
    src = Path(ctx.config.data).read_text(encoding="utf-8")
    out = ctx.stage_dir / "train.jsonl"
    write_text(out, src.upper())
    return StageResult([out], metrics={"records": len(src.splitlines())})


def _train(ctx):
    data = ctx.upstream_path("data").read_text(encoding="utf-8")
    out = ctx.stage_dir / "adapter"
    out.mkdir(exist_ok=True)
    write_text(out / "weights.txt", f"lr={ctx.config.learning_rate}\n{data}")
    write_text(out / "config.json", json.dumps({"r": ctx.config.lora_r}))
    return StageResult([out], metrics={"loss": 0.5})


def _convert(ctx):
    weights = (ctx.upstream_path("train") / "weights.txt").read_bytes()
    out = ctx.stage_dir / f"{ctx.config.name}.{ctx.config.outtype}.gguf"
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(b"GGUF" + weights)
            fh.flush()
            if STALL["on"]:
                print("READY", flush=True)
                sys.stdin.readline()  # blocks until the test kills us
            fh.write(b"END")
    return StageResult([out])


STAGES = [
    Stage("data", "load data", _data, input_files=lambda cfg: [cfg.data]),
    Stage("train", "train", _train),
    Stage("convert", "to gguf", _convert),
]


def run(build_dir, data, force=None, **flags):
    cfg = build_config("tiny", None, {"data": str(data), **flags})
    return run_stages(cfg, STAGES, Path(build_dir), force=force)


if __name__ == "__main__":
    STALL["on"] = "--stall" in sys.argv
    from ftpack.core.report import Reporter, set_reporter

    set_reporter(Reporter("json"))
    run(sys.argv[1], sys.argv[2])
