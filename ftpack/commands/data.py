"""`ftpack data` (validate + normalise a dataset) and `ftpack templates` (chat formats)."""

from __future__ import annotations

from pathlib import Path

import click

from ftpack.core.options import config_options, given_flags
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
@click.argument("file", type=click.Path(path_type=Path), metavar="DATA")
@click.option("--base", default=None, metavar="BASE",
              help="Base model whose tokenizer counts tokens (alias, hub id, folder or .gguf); only its "
                   "tokenizer files are downloaded, never the weights.")
@config_options(["format", "data_columns", "data_config", "data_split", "data_revision", "template", "max_seq_length",
                 "drop_long", "eval_ratio", "seed", "trust_remote_code"],
                help={"template": "Chat template (see `ftpack templates`); default: detected from --base."})
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None, metavar="OUT.jsonl",
              help="Write the normalised training records here (the eval split goes to OUT.eval.jsonl).")
@click.option("--show-tokens", type=click.IntRange(min=1), default=None, metavar="N",
              help="Show the first N records as trained on: the exact training text, its tokens, and which "
                   "tokens carry the loss (needs --base; with --json one object per record).")
def data(file: Path, base: str | None, out: Path | None, show_tokens: int | None, **params) -> None:
    """Validate a dataset, normalise it to `messages` JSONL and show its statistics.

    \b
    DATA: a JSON array or JSONL file, a .parquet, .csv/.tsv or .arrow file, a
    datasets.save_to_disk folder, or a Hugging Face hub dataset id (org/name; --data-config,
    --data-split, --data-revision; offline: read from the local cache).
    Formats (detected per dataset): sharegpt ({"conversations": [{"from", "value"}]}),
    messages ({"messages": [{"role", "content"}]}), alpaca (instruction, input, output),
    io (input, output), prompt-completion (prompt, completion); --data-columns
    conversations=dialog reads a field from another column.
    Every problem is listed as FILE:LINE: what is wrong (FILE:ROW: for the rows of a
    table); then nothing is written (exit 2).
    Example: ftpack data qa.json --base smollm2-135m -o qa.messages.jsonl
    """
    from ftpack.settings import command_settings
    from ftpack.training.bases import resolve_tokenizer
    from ftpack.training.data import eval_path_beside, prepare_data, report_summary, write_split
    from ftpack.training.data_sources import source_of, source_options
    from ftpack.training.templates import choose_base_template, load_template

    reporter = get_reporter()
    settings = command_settings(list(params), given_flags(params))
    where = source_options(settings)
    source_of(file, **where)  # not there, or a setting that does not apply: before a tokenizer loads
    if show_tokens and not base:
        from ftpack.core.errors import bad_input

        raise bad_input("--show-tokens needs --base: tokens come from the base model's tokenizer.")
    tokenizer = tpl = None
    note = None
    if base:
        tokenizer, resolved = resolve_tokenizer(base, trust_remote_code=bool(settings["trust_remote_code"]))
        tpl = choose_base_template(settings["template"], resolved, tokenizer, reporter=reporter)
    elif settings["template"]:
        tpl = load_template(settings["template"])
        note = "no tokenizer: pass --base to count tokens"
    prepared = prepare_data(file, fmt=settings["format"], template=tpl, tokenizer=tokenizer,
                            max_seq_length=settings["max_seq_length"], drop_long=bool(settings["drop_long"]),
                            eval_ratio=settings["eval_ratio"], seed=settings["seed"], tokens_note=note, **where)
    summary = prepared.summary
    if out is not None:
        written = write_split(prepared, out, eval_path_beside(out))
        summary.outputs.update(zip(("train", "eval"), map(str, written)))
    report_summary(summary, reporter)
    if show_tokens:
        from ftpack.training.data import load_dataset
        from ftpack.training.token_check import trained_sequences

        for i, messages in enumerate(load_dataset(file, settings["format"], **where).conversations[:show_tokens]):
            for view in trained_sequences(tokenizer, tpl, messages):  # one per answer where prompts change
                reporter.tokens(i, view.text, view.pieces, view.input_ids, view.train)
    reporter.result(summary.as_dict())
    written_text = f"; wrote {', '.join(summary.outputs.values())}" if summary.outputs else "; nothing written (use -o)"
    reporter.final(f"{summary.records} valid records ({summary.format}){written_text}", **{"records": summary.records})
