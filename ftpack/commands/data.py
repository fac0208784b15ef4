"""`ftpack data` (validate + normalise a dataset) and `ftpack templates` (chat formats)."""

from __future__ import annotations

from pathlib import Path

import click

from ftpack.core.config import DATA_FORMATS
from ftpack.core.report import get_reporter


@click.command()
@click.argument("name", required=False)
def templates(name: str | None) -> None:
    """List the chat formats (or show one: its training and Ollama templates).

    \b
    Each format lives in one file in templates/: the Hugging Face chat template used
    for training, the Ollama TEMPLATE that renders the same text, and stop strings.
    """
    from ftpack.training.templates import list_templates, load_template, templates_table

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


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(DATA_FORMATS, case_sensitive=False), default="auto",
              show_default=True, help="Dataset format (auto: detected from the records' keys).")
@click.option("--template", default=None, metavar="NAME",
              help="Chat template (see `ftpack templates`); default: detected from --base.")
@click.option("--base", default=None, metavar="BASE",
              help="Base model whose tokenizer counts tokens (alias, hub id, folder or .gguf).")
@click.option("--max-seq-length", type=click.IntRange(min=8), default=2048, show_default=True, metavar="N",
              help="Records longer than this many tokens are flagged (or dropped with --drop-long).")
@click.option("--drop-long", is_flag=True, help="Drop records longer than --max-seq-length.")
@click.option("--eval-ratio", type=click.FloatRange(0.0, 0.5), default=None, metavar="R",
              help="Fraction held out for evaluation (default 0.05 with >= 20 records, else 0).")
@click.option("--seed", type=click.IntRange(min=0), default=42, show_default=True, help="Seed of the eval split.")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None, metavar="OUT.jsonl",
              help="Write the normalised training records here (the eval split goes to OUT.eval.jsonl).")
@click.option("--trust-remote-code", is_flag=True, help="Allow the base tokenizer's own Python code.")
def data(file: Path, fmt: str, template: str | None, base: str | None, max_seq_length: int, drop_long: bool,
         eval_ratio: float | None, seed: int, out: Path | None, trust_remote_code: bool) -> None:
    """Validate a dataset, normalise it to `messages` JSONL and show its statistics.

    \b
    Formats (JSON array or JSONL, detected per file): sharegpt ({"conversations": [{"from",
    "value"}]}), messages ({"messages": [{"role", "content"}]}), alpaca (instruction, input,
    output), io (input, output), prompt-completion (prompt, completion).
    Every problem is listed as FILE:LINE: what is wrong; then nothing is written (exit 2).
    Example: ftpack data qa.json --base smollm2-135m -o qa.messages.jsonl
    """
    from ftpack.training.data import load_tokenizer, prepare_data, report_summary, write_jsonl
    from ftpack.training.templates import choose_template, load_template

    reporter = get_reporter()
    tokenizer = tpl = None
    note = None
    if base:
        tokenizer, resolved = load_tokenizer(base, trust_remote_code=trust_remote_code)
        tpl = choose_template(template or resolved.template, resolved.model_id or base, tokenizer)
    elif template:
        tpl = load_template(template)
        note = "no tokenizer: pass --base to count tokens"
    prepared = prepare_data(file, fmt=fmt.lower(), template=tpl, tokenizer=tokenizer, max_seq_length=max_seq_length,
                            drop_long=drop_long, eval_ratio=eval_ratio, seed=seed, tokens_note=note)
    summary = prepared.summary
    if out is not None:
        summary.outputs["train"] = str(write_jsonl(out, prepared.train))
        if prepared.eval:
            eval_path = out.with_name(out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name)
            eval_path = eval_path.with_name(eval_path.name + ".eval.jsonl")
            summary.outputs["eval"] = str(write_jsonl(eval_path, prepared.eval))
    report_summary(summary, reporter)
    reporter.result(summary.as_dict())
    written = f"; wrote {', '.join(summary.outputs.values())}" if summary.outputs else "; nothing written (use -o)"
    reporter.final(f"{summary.records} valid records ({summary.format}){written}", **{"records": summary.records})
