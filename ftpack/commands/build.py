"""`ftpack build`: the whole pipeline, from a dataset to `ollama run NAME`.

A shell over :func:`ftpack.pipeline.run_build`: parse flags, run, print the outcome.
"""

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
    data -> train -> convert -> quantize -> verify -> modelfile -> register -> roundtrip -> report
    A model that fails verify is not registered (--no-verify skips the check).
    A rerun skips finished stages; an interrupted build resumes where it stopped.
    Example: ftpack build my-qa --data qa.jsonl --max-steps 60
    """
    from ftpack.core.config import config_to_dict, config_to_toml, load_config_file
    from ftpack.core.errors import bad_input
    from ftpack.core.runner import report_summary
    from ftpack.pipeline import BuildFailed, build_dir_of, build_outcome, resolve_config, run_build
    from ftpack.settings import build_config

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
        cfg, why = resolve_config(cfg)
        reporter.result({"config": config_to_dict(cfg), "resolved": why})
        if reporter.mode != "json":
            click.echo(config_to_toml(cfg, why), nl=False)
        return

    ctx.obj.resume_hint = f"Run the same command again to resume: finished stages in {build_dir_of(cfg)} are kept."
    try:
        manifest = run_build(cfg, force=force, reporter=reporter)
    except BuildFailed as exc:  # verify or the round trip: the error line says what state the build is in
        report_summary(exc.manifest, reporter)
        reporter.event("outcome", **exc.outcome.as_dict())
        raise
    outcome = build_outcome(manifest)
    report_summary(manifest, reporter)
    if outcome.report:
        reporter.info(f"model card: {outcome.report}")
    facts = outcome.as_dict()
    reporter.final(facts.pop("message"), **facts)
