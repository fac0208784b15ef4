"""`ftpack doctor`: what this machine has, and how to fix what it lacks."""

from __future__ import annotations

from pathlib import Path

import click

from ftpack.core.report import get_reporter


@click.command()
@click.option("--out", "builds_dir", type=click.Path(path_type=Path), default=Path("builds"),
              show_default=True, help="Where builds go (for the free-disk row).")
@click.option("--host", default=None, help="Ollama server URL (default: OLLAMA_HOST or http://127.0.0.1:11434).")
def doctor(builds_dir: Path, host: str | None) -> None:
    """Check Python, libraries, devices, llama.cpp and the Ollama server."""
    from ftpack.core.doctor import MISSING, OK, WARN, checks_to_json, run_checks

    reporter = get_reporter()
    rows = run_checks(builds_dir, host)
    style = {OK: "[green]OK[/]", WARN: "[yellow]warning[/]", MISSING: "[red]missing[/]"}
    from rich.text import Text

    reporter.table("ftpack doctor", ("check", "status", "value", "hint"),
                   [(r.name, Text.from_markup(style[r.status]), r.value, r.hint) for r in rows],
                   data=checks_to_json(rows))
    missing = sum(r.status == MISSING for r in rows)
    warnings = sum(r.status == WARN for r in rows)
    reporter.final(f"{len(rows) - missing - warnings} ok, {warnings} warnings, {missing} missing",
                   ok=len(rows) - missing - warnings, warnings=warnings, missing=missing)
