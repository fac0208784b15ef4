"""`ftpack train`: fine-tune a base model on a dataset (any supported format) into --out."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ftpack.core.config import OPTIONS
from ftpack.core.options import config_options, given_flags
from ftpack.core.report import Reporter, get_reporter, set_reporter

#: The flags of this command: every data- and train-stage setting (same names as the
#: config-file keys, generated from OPTIONS so they never drift), plus --out.
TRAIN_KEYS = [o.key for o in OPTIONS if o.stage in ("data", "train")] + ["out"]


@click.command(context_settings={"max_content_width": 110})
@click.option("--config", "config_file", type=click.Path(path_type=Path),
              help="TOML or YAML file with any of the settings below (same names, snake_case).")
@click.option("--resume/--no-resume", "resume", default=None,
              help="Continue from the last checkpoint in --out (default: automatically when one of the "
                   "same settings exists); --no-resume starts over.")
@config_options(TRAIN_KEYS)
def train(config_file: Path | None, resume: bool | None, **params) -> None:
    """Fine-tune --base on --data with --method qlora | lora | sft | full.

    \b
    Writes to --out: data/train.jsonl (+ eval.jsonl), adapter/ (LoRA, QLoRA) or model/
    (sft, full) with the tokenizer and the training chat template, loss.csv, loss.png,
    trainer_state.json. Checkpoints every --save-steps; an interrupted run resumes.
    Example: ftpack train --data qa.jsonl --method lora --max-steps 60 --out runs/qa
    Multi-GPU: torchrun --nproc_per_node 4 -m ftpack train ...
    """
    from ftpack.core.config import build_config, load_config_file
    from ftpack.training.data import load_tokenizer, prepare_data, report_summary, write_jsonl
    from ftpack.core.errors import bad_input
    from ftpack.training.templates import choose_template
    from ftpack.training.train import train as run_training

    reporter = get_reporter()
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun / accelerate: rank 0 speaks for all
        reporter = Reporter("quiet")
        set_reporter(reporter)
    file_values = load_config_file(config_file) if config_file else None
    cfg = build_config("train", file_values, given_flags(params),
                       source=str(config_file) if config_file else "config file")
    if cfg.data is None:
        raise bad_input("No dataset given.", "Pass --data FILE (JSON or JSONL).")
    if cfg.out is None:
        raise bad_input("No output folder given.", "Pass --out DIR.")
    if not Path(cfg.data).is_file():
        raise bad_input(f"Dataset not found: {cfg.data}")
    out = Path(cfg.out)

    tokenizer, resolved = load_tokenizer(cfg.base, trust_remote_code=bool(cfg.trust_remote_code),
                                         allow_pickle=bool(cfg.allow_pickle))
    template = choose_template(cfg.template or resolved.template, resolved.model_id, tokenizer)
    prepared = prepare_data(cfg.data, fmt=cfg.format or "auto", template=template, tokenizer=tokenizer,
                            max_seq_length=cfg.max_seq_length, drop_long=bool(cfg.drop_long),
                            eval_ratio=cfg.eval_ratio, seed=cfg.seed)
    train_file = write_jsonl(out / "data" / "train.jsonl", prepared.train)
    eval_file = write_jsonl(out / "data" / "eval.jsonl", prepared.eval) if prepared.eval else None
    report_summary(prepared.summary, reporter)

    from ftpack.training.train import train_kwargs_from_config

    result = run_training(cfg.base, train_file, out, eval_file=eval_file, template=template.name,
                          resume=resume, reporter=reporter, **train_kwargs_from_config(cfg))
    reporter.result({**result.metrics, "output": str(result.output), "loss_csv": str(result.loss_csv),
                     "loss_png": str(result.loss_png)})
    loss = f"loss {result.first_loss:.3f} → {result.train_loss:.3f}" if result.train_loss is not None else ""
    if result.eval_loss is not None:
        loss += f", eval loss {result.eval_loss:.3f}"
    if int(os.environ.get("RANK", "0")) > 0:
        return
    reporter.final(f"Trained {result.method} for {result.steps} steps ({loss}) in {result.seconds:.0f}s: "
                   f"{result.output}")
