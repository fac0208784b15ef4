"""`ftpack train`: fine-tune a base model on a dataset (any supported format) into --out."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import click

from ftpack.core.config import OPTIONS
from ftpack.core.options import config_options, given_flags
from ftpack.core.report import Reporter, get_reporter, set_reporter

#: The flags of this command: every data- and train-stage setting (same names as the
#: config-file keys, generated from OPTIONS so they never drift), plus --out and --report-to.
TRAIN_KEYS = [o.key for o in OPTIONS if o.stage in ("data", "train")] + ["out", "report_to"]


@click.command(context_settings={"max_content_width": 110})
@click.option("--config", "config_file", type=click.Path(path_type=Path),
              help="TOML or YAML file with any of the settings below (same names, snake_case).")
@click.option("--resume/--no-resume", "resume", default=None,
              help="Continue from the last checkpoint in --out (default: automatically when one of the "
                   "same settings exists); --no-resume starts over.")
@config_options(TRAIN_KEYS, help={"out": "Output folder (required): data/, adapter/ or model/, checkpoints/, "
                                          "loss.csv, loss.png."})
def train(config_file: Path | None, resume: bool | None, **params) -> None:
    """Fine-tune --base on --data with --method qlora | lora | sft | full.

    \b
    Runs the build's data step (validate, choose the chat template, split) into
    --out/data/, then trains into --out: adapter/ (LoRA, QLoRA) or model/ (sft, full)
    with the tokenizer, the training chat template and ftpack_template.json, loss.csv,
    loss.png, trainer_state.json. Checkpoints every --save-steps; an interrupted run resumes.
    Example: ftpack train --data qa.jsonl --method lora --max-steps 60 --out runs/qa
    Multi-GPU: torchrun --nproc_per_node 4 -m ftpack train ...
    """
    from ftpack.core.config import load_config_file
    from ftpack.core.errors import bad_input
    from ftpack.core.layout import BuildLayout
    from ftpack.settings import build_config
    from ftpack.training.data import prepare_build_data
    from ftpack.training.settings import TrainSettings
    from ftpack.training.train import train as run_training

    reporter = get_reporter()
    other_rank = int(os.environ.get("RANK", "0")) > 0  # under torchrun / accelerate: rank 0 speaks for all
    if other_rank:
        reporter = Reporter("quiet")
        set_reporter(reporter)
    file_values = load_config_file(config_file) if config_file else None
    cfg = build_config("train", file_values, given_flags(params),
                       source=str(config_file) if config_file else "config file")
    if cfg.out is None:
        raise bad_input("No output folder given.", "Pass --out DIR.")
    out = Path(cfg.out)
    with contextlib.ExitStack() as stack:
        layout = BuildLayout(out)  # data/ as in a build; the training outputs go straight into --out
        if other_rank:
            # Under a launcher only rank 0 checks --out and writes there before training: the
            # other ranks make the same (seeded) split in a private folder, so nothing of theirs
            # can appear in --out before rank 0 has looked at it.
            layout = BuildLayout(Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ftpack-rank-"))))
        built = prepare_build_data(cfg, layout, reporter)
        result = run_training(cfg.base, layout.train_file, out, settings=TrainSettings.from_config(cfg),
                              template=built.template, eval_file=layout.eval_file, resume=resume,
                              reporter=reporter)
    reporter.result({**result.metrics, "template": result.template, "output": str(result.output),
                     "loss_csv": str(result.loss_csv), "loss_png": str(result.loss_png)})
    loss = f"loss {result.first_loss:.3f} → {result.train_loss:.3f}" if result.train_loss is not None else ""
    if result.eval_loss is not None:
        loss += f", eval loss {result.eval_loss:.3f}"
    if other_rank:
        return
    reporter.final(f"Trained {result.method} for {result.steps} steps ({loss}) in {result.seconds:.0f}s: "
                   f"{result.output}")
