"""`ftpack build`: the whole pipeline, from a dataset to `ollama run NAME`."""

from __future__ import annotations

from pathlib import Path

import click

from ftpack.core.options import config_options, given_flags
from ftpack.core.report import get_reporter


@click.command(context_settings={"max_content_width": 110})
@click.argument("name")
@click.option("--config", "config_file", type=click.Path(path_type=Path),
              help="TOML or YAML file with any of the settings below (same names, snake_case).")
@click.option("--force", "force", metavar="STAGE", help="Rerun this stage and every later one.")
@click.option("--no-register", "no_register", is_flag=True, help="Do not register with Ollama (same as --register none).")
@click.option("--offline", "offline", is_flag=True,
              help="Write Ollama's model store directly instead of using the server (--register offline).")
@click.option("--print-config", is_flag=True, help="Print the resolved configuration as TOML and exit.")
@config_options()
@click.pass_context
def build(ctx: click.Context, name: str, config_file: Path | None, force: str | None, no_register: bool,
          offline: bool, print_config: bool, **params) -> None:
    """Run the whole pipeline: data to a model you can `ollama run`.

    \b
    data -> train -> convert -> quantize -> modelfile -> register -> verify
    A rerun skips finished stages; an interrupted build resumes where it stopped.
    Example: ftpack build my-qa --data qa.jsonl --max-steps 60
    """
    from ftpack.core.runner import report_summary, run_stages
    from ftpack.core.config import build_config, config_to_dict, config_to_toml, default_build_dir, load_config_file
    from ftpack.core.errors import bad_input
    from ftpack.pipeline import build_stages, next_command, resolve_method, resolve_register

    reporter = get_reporter()
    flags = given_flags(params)
    if no_register and offline:
        raise bad_input("--no-register and --offline contradict each other.", "Choose one.")
    if no_register:
        flags["register"] = "none"
    elif offline:
        flags["register"] = "offline"
    file_values = load_config_file(config_file) if config_file else None
    cfg = build_config(name, file_values, flags, source=str(config_file) if config_file else "config file")
    if print_config:
        reporter.result({"config": config_to_dict(cfg)})
        if reporter.mode != "json":
            click.echo(config_to_toml(cfg), nl=False)
        return
    if cfg.data is None:
        raise bad_input("No dataset given.", "Pass --data FILE (JSON or JSONL), or `data = ...` in --config.")
    if not Path(cfg.data).is_file():
        raise bad_input(f"Dataset not found: {cfg.data}")

    cfg.method, why = resolve_method(cfg.method)
    reporter.info(f"method: {cfg.method} ({why})")
    cfg.register, why = resolve_register(cfg.register, cfg.host)
    reporter.info(f"register: {cfg.register} ({why})")
    build_dir = Path(cfg.out) if cfg.out else default_build_dir(cfg.name)
    ctx.obj.resume_hint = (f"Run the same command again to resume: finished stages in {build_dir} are kept.")

    manifest = run_stages(cfg, build_stages(), build_dir, force=force, reporter=reporter)
    from ftpack.model_card import write_model_card

    card = write_model_card(manifest)
    report_summary(manifest, reporter)
    cmd = next_command(cfg, build_dir)
    reporter.info(f"model card: {card}")
    reporter.final(f"Done. Try it: {cmd}", build_dir=str(build_dir), next=cmd)

