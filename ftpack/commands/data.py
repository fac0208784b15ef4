"""`ftpack data` (validate + normalise a dataset) and `ftpack templates` (chat formats)."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import DATA_FORMATS
from ..report import get_reporter


@click.command()
@click.argument("name", required=False)
def templates(name: str | None) -> None:
    """List the chat formats (or show one: its training and Ollama templates).

    \b
    Each format lives in one file in templates/: the Hugging Face chat template used
    for training, the Ollama TEMPLATE that renders the same text, and stop strings.
    """
    from ..templates import list_templates, load_template, templates_table

    reporter = get_reporter()
    if name:
        tpl = load_template(name)
        reporter.result({"template": {**templates_table([tpl])[0], "chat_template": tpl.chat_template,
                                      "ollama_template": tpl.ollama_template, "end_of_turn": tpl.end_of_turn,
                                      "path": str(tpl.path)}})
        if reporter.mode == "rich":
            reporter.info(f"{tpl.name}: {tpl.description}\nfile: {tpl.path}\n"
                          f"stop: {', '.join(tpl.stop)}\nend of turn: {tpl.end_of_turn}\n"
                          f"default system: {tpl.default_system or '(none)'}\n\n"
                          f"-- training chat template (Hugging Face Jinja) --\n{tpl.chat_template}\n\n"
                          f"-- Ollama TEMPLATE --\n{tpl.ollama_template}")
        return
    rows = templates_table(list_templates())
    reporter.table("chat templates", ("name", "description", "stop"),
                   [(r["name"], r["description"], " ".join(r["stop"])) for r in rows], data=rows)
    reporter.result({"templates": rows})
    reporter.final(f"{len(rows)} chat templates; use --template NAME, or `ftpack templates NAME` for details.")
