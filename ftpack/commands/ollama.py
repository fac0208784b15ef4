"""Ollama commands: `modelfile`, `register`, `list`, `remove`, `chat` (thin shells over the library)."""

from __future__ import annotations

from pathlib import Path

import click

from ftpack.core.options import config_options, given_flags
from ftpack.core.report import get_reporter

#: --host and --models-dir: the same flags (and help) as `ftpack build`'s.
_where_options = config_options(["host", "models_dir"])


#: The settings `ftpack modelfile` shares with `ftpack build` (same flags, checks and defaults).
MODELFILE_KEYS = ("template", "system", "parameters", "messages", "license")


@click.command()
@click.argument("gguf", type=click.Path(path_type=Path))
@config_options(MODELFILE_KEYS, required=["template"], help={
    "template": "Chat format from templates/ (see `ftpack templates`).",
    "system": "SYSTEM prompt (default: the template's default, if any).",
    "license": "License text file (LICENSE in the Modelfile)."})
@click.option("--adapter", type=click.Path(path_type=Path), default=None, help="ADAPTER GGUF (LoRA).")
@click.option("--num-ctx", type=int, default=None, help="PARAMETER num_ctx (e.g. the training max length).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("Modelfile"), show_default=True,
              help="Where to write the Modelfile (FROM is written relative to it).")
def modelfile(gguf: Path, adapter: Path | None, num_ctx: int | None, output: Path, **flags) -> None:
    """Write an Ollama Modelfile for GGUF with a chat format's TEMPLATE and stops."""
    from ftpack.core.errors import bad_input
    from ftpack.ollama.modelfile import build_spec, parse_message_args, parse_parameter_args, spec_to_dict, write_modelfile
    from ftpack.settings import command_settings

    r = get_reporter()
    settings = command_settings(MODELFILE_KEYS, given_flags(flags))
    template_name, system, license_file = settings["template"], settings["system"], settings["license"]
    params, messages = settings["parameters"] or (), settings["messages"] or ()
    if not gguf.is_file():
        raise bad_input(f"GGUF file not found: {gguf}")
    if adapter is not None and not adapter.is_file():
        raise bad_input(f"Adapter file not found: {adapter}")
    license_text = license_file.read_text(encoding="utf-8") if license_file is not None else None
    spec = build_spec(gguf, output, template_name=template_name, system=system,
                      parameters=parse_parameter_args(params), messages=parse_message_args(messages),
                      license_text=license_text, adapter=adapter, num_ctx=num_ctx,
                      comment=f"Written by ftpack (chat format: {template_name}).")
    write_modelfile(output, spec)
    r.result({"modelfile": str(output), **spec_to_dict(spec)})
    r.final(f"Wrote {output}. Create the model: ollama create NAME -f {output}  (or: ftpack register NAME "
            f"--modelfile {output})", path=str(output))


@click.command()
@click.argument("name")
@click.option("--modelfile", "modelfile_path", type=click.Path(path_type=Path), required=True,
              help="The Modelfile to register (its FROM must be a local GGUF).")
@click.option("--offline", is_flag=True, help="Write Ollama's model store directly (no server needed).")
@_where_options
@click.option("--force", is_flag=True, help="Replace an existing model of that name.")
def register(name: str, modelfile_path: Path, host: str | None, offline: bool, models_dir: Path | None,
             force: bool) -> None:
    """Create model NAME in Ollama from a Modelfile (upload only what the server lacks)."""
    from ftpack.ollama.registration import register as do_register

    r = get_reporter()
    result = do_register(name, modelfile_path, mode="offline" if offline else "server", host=host,
                         models_dir=models_dir, force=force, reporter=r)
    run = f"ollama run {result.name.removesuffix(':latest')}"
    r.result({"name": result.name, "where": result.where, "store": str(result.store) if result.store else None,
              "model_digest": result.model_digest, "manifest_digest": result.manifest_digest,
              "uploaded_bytes": result.uploaded_bytes, "run": run})
    r.final(f"Registered {result.name} in {result.place}. Try it: {run}", run=run)


def _auto_place(offline: bool, host: str | None) -> bool:
    """--offline as given; else the same choice as a build's ``--register auto``: the server when
    it answers, otherwise Ollama's model store (said, so the user knows which was read)."""
    if offline:
        return True
    from ftpack.ollama.probe import probe_server

    probe = probe_server(host, timeout=2.0)  # what resolve_register("auto") asks
    if not probe.reachable:
        get_reporter().info(f"No Ollama server at {probe.host} ({probe.reason}): using Ollama's model store")
    return not probe.reachable


@click.command("list")
@click.option("--offline", is_flag=True, help="Read Ollama's model store (default: the server when it answers, "
                                              "otherwise the store).")
@_where_options
@click.option("--all", "show_all", is_flag=True, help="Also show models ftpack did not create.")
def list_cmd(host: str | None, offline: bool, models_dir: Path | None, show_all: bool) -> None:
    """Show the Ollama models created by ftpack (shipped form, build dir, base, method, quant, size).

    ftpack recognises its models by the index it keeps when registering
    (FTPACK_HOME/registered.json): a model counts as ftpack's while its manifest digest
    is still the one ftpack created, whether it was registered through a server or
    written offline into the store that server uses. "shipped" is gguf (the model's own
    weights) or adapter (a LoRA adapter on another model's weights, which it shares: its
    size is the adapter's, "+ NAME" the base it needs).
    """
    from ftpack.core.atomic import human_bytes
    from ftpack.ollama.index import place_of
    from ftpack.ollama.registration import list_models

    r = get_reporter()
    where, models = list_models(offline=_auto_place(offline, host), host=host, models_dir=models_dir)
    shown = [m for m in models if show_all or m.ftpack is not None]
    rows, data = [], []
    for m in shown:
        e = m.ftpack or {}
        size = human_bytes(m.size)
        if m.shipped == "adapter" and m.own_size is not None:
            size = f"{human_bytes(m.own_size)} + {m.base_model or 'its base'}"
        rows.append((m.name, "yes" if m.ftpack else "no", m.shipped or "-", e.get("build_dir") or "-",
                     e.get("base") or "-", e.get("method") or ("base" if e.get("role") == "base" else "-"),
                     m.quant or e.get("quant") or "-", size))
        data.append({"name": m.name, "ftpack": m.ftpack is not None, "shipped": m.shipped or None,
                     "base_model": m.base_model, "build_dir": e.get("build_dir"),
                     "base": e.get("base"), "method": e.get("method"), "role": e.get("role"),
                     "quant": m.quant or e.get("quant"), "size": m.size, "own_size": m.own_size,
                     "digest": m.digest, "modified": m.modified})
    r.table(f"Ollama models ({place_of(where)})",
            ("name", "ftpack", "shipped", "build dir", "base", "method", "quant", "size"), rows, data=data)
    r.result({"where": where, "models": data})
    r.final(f"{len(shown)} model(s)" + ("" if show_all else " created by ftpack") +
            ("" if shown or show_all else " (use --all to see every model)"), count=len(shown))


@click.command()
@click.argument("name")
@click.option("--offline", is_flag=True, help="Remove from Ollama's model store directly (default: through the "
                                              "server when it answers, otherwise from the store).")
@_where_options
@click.option("--force", is_flag=True, help="Also remove a model ftpack did not create.")
def remove(name: str, host: str | None, offline: bool, models_dir: Path | None, force: bool) -> None:
    """Delete model NAME from Ollama (blobs other models share are kept).

    A base that another model's adapter is built on is never removed: remove those first.
    """
    from ftpack.ollama.index import place_of
    from ftpack.ollama.registration import remove as do_remove

    r = get_reporter()
    where = do_remove(name, offline=_auto_place(offline, host), host=host, models_dir=models_dir, force=force)
    r.result({"name": name, "where": where, "removed": True})
    r.final(f"Removed {name} ({place_of(where)}).")


@click.command()
@click.argument("target", type=click.Path(path_type=Path))
@config_options(["template", "system"], help={
    "template": "Chat format (default: from the build or the GGUF).",
    "system": "System prompt (default: the build's Modelfile / the template's)."})
@click.option("--max-tokens", type=int, default=512, show_default=True, help="Longest answer.")
@click.option("--temperature", type=float, default=None, help="Sampling temperature (default: the Modelfile's or 0.7).")
@click.option("--ctx", "n_ctx", type=int, default=None, help="Context length (default: the Modelfile's num_ctx or 2048).")
@click.option("-p", "--prompt", "prompts", multiple=True, help="Ask this and exit (repeatable: one turn each).")
def chat(target: Path, max_tokens: int, temperature: float | None, n_ctx: int | None, prompts: tuple[str, ...],
         **flags) -> None:
    """Chat with a GGUF (or a build dir's model) locally, streaming tokens; no Ollama needed.

    Type /reset to forget the conversation, /exit (or Ctrl-D) to leave. A conversation that
    fills the context starts over (with a notice).
    """
    from ftpack.core.errors import FtpackError
    from ftpack.inference.chat import ChatSession, resolve_target

    from ftpack.settings import command_settings

    r = get_reporter()
    settings = command_settings(["template", "system"], given_flags(flags))  # checked like build's
    chat_target = resolve_target(target, template_name=settings["template"], system=settings["system"])
    stream_out = r.mode != "json"
    with ChatSession(chat_target, max_tokens=max_tokens, temperature=temperature, n_ctx=n_ctx,
                     reporter=r) as session:
        if r.mode == "rich":
            r.info(f"Chatting with {chat_target.gguf.name} ({chat_target.template_name} template, stops "
                   f"{', '.join(chat_target.stop)}). /reset, /exit.")
        turns = list(prompts) if prompts else None
        while True:
            if turns is not None:
                if not turns:
                    break
                text = turns.pop(0)
                if stream_out:
                    click.echo(f">>> {text}")
            else:
                try:
                    text = click.prompt(">>>", prompt_suffix=" ", default="", show_default=False)
                except (EOFError, click.exceptions.Abort):
                    break
            text = text.strip()
            if text in ("/exit", "/bye", "/quit"):
                break
            if text == "/reset":
                session.reset()
                continue
            if not text:
                continue
            pieces = []
            try:
                for piece in session.send(text):
                    pieces.append(piece)
                    if stream_out:
                        click.echo(piece, nl=False)
            except FtpackError as exc:  # a message too long for the context: say so, keep the session
                r.warn(exc.message, exc.hint)
                continue
            if stream_out:
                click.echo()
            r.event("answer", prompt=text, text="".join(pieces), finish_reason=session.last_finish_reason)
            if session.last_finish_reason == "length":
                r.warn(f"The answer hit the {max_tokens}-token limit without a stop string or EOS.")
        r.result({"turns": [m for m in session.history]})
