"""Checkpoints: resume an interrupted run only from a complete checkpoint of the same run.

A run's fingerprint hashes what its checkpoints depend on (the hyper-parameters, the
chat template, the data files, the base folder); it is written beside the checkpoints,
and a later run with a different fingerprint starts over instead of resuming.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ftpack.core.atomic import sha256_file
from ftpack.core.errors import bad_input
from ftpack.core.report import Reporter

#: Written beside the checkpoints: the fingerprint of the run they belong to.
RUN_MARK = "ftpack-run.json"


def run_fingerprint(hyper_parameters: dict[str, Any], template: str, base_path: Path, train_file: Path,
                    eval_file: Path | None) -> str:
    """Hash of what a checkpoint depends on: hyper-parameters, chat template, data, base folder."""
    blob = json.dumps({"settings": {**hyper_parameters, "template": template}, "train": sha256_file(train_file),
                       "eval": sha256_file(eval_file) if eval_file and eval_file.exists() else None,
                       "base": str(base_path)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def mark_run(ckpt_dir: Path, fingerprint: str) -> None:
    """Record which run the checkpoints in ``ckpt_dir`` belong to (rank 0 only)."""
    from ftpack.core.atomic import write_json

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    write_json(ckpt_dir / RUN_MARK, {"fingerprint": fingerprint})


def checkpoint_to_resume(ckpt_dir: Path, fingerprint: str, resume: bool | None, r: Reporter) -> Path | None:
    """The checkpoint to continue from, if any. ``resume``: None = the last complete one
    of the same run; True = one must exist; False = start over (old ones are removed)."""
    last = last_complete_checkpoint(ckpt_dir)
    if resume is False:
        if ckpt_dir.exists() and int(os.environ.get("RANK", "0")) == 0:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        return None
    if last is None:
        if resume:
            raise bad_input(f"--resume: no checkpoint in {ckpt_dir}.",
                            "Start without --resume; checkpoints are written every --save-steps steps.")
        return None
    same = False
    mark = ckpt_dir / RUN_MARK
    if mark.is_file():
        try:
            same = json.loads(mark.read_text(encoding="utf-8")).get("fingerprint") == fingerprint
        except ValueError:
            same = False
    if not same and not resume:
        r.info(f"Ignoring checkpoints in {ckpt_dir}: they belong to other settings or data.")
        if int(os.environ.get("RANK", "0")) == 0:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        return None
    if not same:
        r.warn(f"Resuming from {last} although the settings or data changed since it was written.")
    r.info(f"Resuming from {Path(last).name}.")
    return Path(last)


def last_complete_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest ``checkpoint-N`` that was written to the end.

    The Trainer writes ``trainer_state.json`` last, so a checkpoint killed mid-save lacks
    it and is skipped (resuming from it would fail or load half-written weights).
    """
    if not ckpt_dir.is_dir():
        return None
    found = [(step_of(p), p) for p in ckpt_dir.glob("checkpoint-*") if p.is_dir()]
    for step, path in sorted((s, p) for s, p in found if s is not None)[::-1]:
        if (path / "trainer_state.json").is_file():
            return path
    return None


def step_of(checkpoint: Path | None) -> int | None:
    """N of ``checkpoint-N`` (None for no checkpoint)."""
    if checkpoint is None:
        return None
    try:
        return int(checkpoint.name.rsplit("-", 1)[-1])
    except ValueError:
        return None
