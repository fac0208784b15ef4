"""The `ftpack` command line: a thin click shell over library functions.

Commands are imported only when invoked (see :data:`COMMANDS`), so `ftpack --help`
never imports torch or transformers. The group turns every :class:`FtpackError` into
a short red message with a hint and exit code 2 (bad input) or 1 (failed run); Ctrl-C
exits with 130 and says how to resume. ``--debug`` shows tracebacks instead.
"""

from __future__ import annotations

import importlib
import sys

import click

from ftpack import __version__
from ftpack.core.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, FtpackError
from ftpack.core.quiet import set_debug
from ftpack.core.report import Reporter, set_reporter

#: name -> ("module:attribute", one-line purpose). The purpose is shown by --help
#: without importing the module.
COMMANDS: dict[str, tuple[str, str]] = {
    "build": ("ftpack.commands.build:build", "Run the whole pipeline: data to a model you can `ollama run`."),
    "data": ("ftpack.commands.data:data", "Validate a dataset, normalise it to messages JSONL, show stats."),
    "train": ("ftpack.commands.train:train", "Fine-tune a base model on a dataset (qlora, lora, sft, full)."),
    "merge": ("ftpack.commands.gguf:merge", "Fold a LoRA/DoRA adapter into a 16-bit copy of its base (streaming)."),
    "convert": ("ftpack.commands.gguf:convert", "Convert a Hugging Face model (+ adapter) to GGUF, tensor by tensor."),
    "quantize": ("ftpack.commands.gguf:quantize", "Quantize a GGUF with llama.cpp (default Q4_K_M)."),
    "imatrix": ("ftpack.commands.gguf:imatrix", "Compute an importance matrix for quantization from conversations."),
    "verify": ("ftpack.commands.verify:verify", "Check with llama.cpp that a build (or GGUF) answers and stops; fidelity."),
    "modelfile": ("ftpack.commands.ollama:modelfile", "Write an Ollama Modelfile for a GGUF (TEMPLATE, stops, SYSTEM...)."),
    "register": ("ftpack.commands.ollama:register", "Create a model in Ollama from a Modelfile (server or --offline store)."),
    "chat": ("ftpack.commands.ollama:chat", "Chat with a GGUF or build locally (llama.cpp, streaming), no Ollama needed."),
    "list": ("ftpack.commands.ollama:list_cmd", "Show the Ollama models ftpack created (build, base, method, quant, size)."),
    "remove": ("ftpack.commands.ollama:remove", "Delete an Ollama model ftpack created (shared blobs are kept)."),
    "inspect": ("ftpack.commands.gguf:inspect", "Show a GGUF's metadata and tensor types, or a build's manifest."),
    "templates": ("ftpack.commands.data:templates", "List the chat formats (training + Ollama templates)."),
    "doctor": ("ftpack.commands.doctor:doctor", "Check Python, libraries, devices, llama.cpp and Ollama."),
}


class App:
    """Per-invocation state shared by commands (the reporter and the --debug flag)."""

    def __init__(self, reporter: Reporter, debug: bool):
        self.reporter = reporter
        self.debug = debug
        self.resume_hint: str | None = None
        set_debug(debug)  # --debug also shows library warnings and logs (ftpack.core.quiet)

    def set_output(self, flag: str) -> None:
        """Apply an output flag given after the subcommand (`ftpack doctor --json`)."""
        if flag == "debug":
            self.debug = True
            set_debug(True)
            return
        if flag == "quiet" and self.reporter.mode == "json":
            return  # --json wins over --quiet, in any order
        self.reporter = Reporter(flag)
        set_reporter(self.reporter)


#: The output flags: accepted before the subcommand and after it.
OUTPUT_FLAGS = (
    (("--quiet", "-q"), "quiet", "Print only errors and the final line."),
    (("--json",), "json", "Print one JSON object per event (for scripts)."),
    (("--debug",), "debug", "Show Python tracebacks on errors, and the libraries' own warnings and logs."),
)


def _output_flag_callback(flag: str):
    def callback(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        app = ctx.find_object(App)
        if value and app is not None:
            app.set_output(flag)

    return callback


def add_output_flags(command: click.Command) -> click.Command:
    """Give a subcommand the group's output flags (once), so they work after it too."""
    taken = {opt for p in command.params for opt in getattr(p, "opts", ())}
    for names, flag, help_text in OUTPUT_FLAGS:
        if not taken.intersection(names):
            command.params.append(click.Option(list(names), is_flag=True, expose_value=False, help=help_text,
                                               callback=_output_flag_callback(flag)))
    return command


class LazyGroup(click.Group):
    """A group whose commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)  # pipeline order, then the helpers

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        entry = COMMANDS.get(name)
        if entry is None:
            return None
        module, _, attr = entry[0].partition(":")
        return add_output_flags(getattr(importlib.import_module(module), attr))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FtpackError as exc:
            app: App | None = ctx.obj
            if app is None or app.debug:
                raise
            app.reporter.error(exc.message, exc.hint)
            ctx.exit(exc.code)
        except KeyboardInterrupt:
            app = ctx.obj
            if app is not None and app.debug:
                raise
            reporter = app.reporter if app else Reporter("rich")
            reporter.error("Interrupted.", (app.resume_hint if app and app.resume_hint else
                           "Run the same command again to resume: finished stages are kept."))
            ctx.exit(EXIT_INTERRUPTED)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except MemoryError:
            app = ctx.obj
            if app is None or app.debug:
                raise
            app.reporter.error("Out of memory.", "Use a smaller batch size, --method qlora, or a machine "
                               "with more memory; run with --debug for details.")
            ctx.exit(EXIT_FAILED)
        except OSError as exc:
            app = ctx.obj
            if app is None or app.debug:
                raise
            import errno

            if exc.errno == errno.ENOSPC:
                app.reporter.error(f"Disk full while writing {exc.filename or ''}".strip() + ".",
                                   "Free some space and run the same command again: finished stages are kept.")
            else:
                app.reporter.error(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
                                   "Check the path and its permissions; --debug shows the traceback.")
            ctx.exit(EXIT_FAILED)
        except Exception as exc:  # a bug, not a user mistake: say so, briefly
            app = ctx.obj
            if app is None or app.debug:
                raise
            app.reporter.error(f"Internal error: {type(exc).__name__}: {exc}",
                               "Run again with --debug for the traceback and report it.")
            ctx.exit(EXIT_FAILED)


def _group_output_flags(f):
    for names, flag, help_text in reversed(OUTPUT_FLAGS):
        f = click.option(*names, flag, is_flag=True, help=help_text)(f)
    return f


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="ftpack")
@_group_output_flags
@click.pass_context
def cli(ctx: click.Context, **flags: bool) -> None:
    """Fine-tune a base model on your conversations and run it with Ollama.

    \b
    Pipeline: data -> train -> convert (GGUF) -> quantize -> verify (llama.cpp)
              -> modelfile -> register (Ollama) -> round trip
    Example:  ftpack build my-qa --data qa.jsonl   # then: ollama run my-qa
    """
    mode = "json" if flags["json"] else "quiet" if flags["quiet"] else "rich"
    reporter = Reporter(mode)
    set_reporter(reporter)
    ctx.obj = App(reporter, flags["debug"])


def main() -> None:  # console-script entry point
    cli(prog_name="ftpack")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
