"""`ftpack verify BUILD|GGUF`: does the model answer and stop, and how much did quantization cost?

A thin shell over :func:`ftpack.inference.verify.verify_target`, the same check the
build runs before it registers a model; here for any build folder or GGUF file.
"""

from __future__ import annotations

from pathlib import Path

import click

from ftpack.core.options import config_options, given_flags
from ftpack.core.report import get_reporter

#: The settings `ftpack verify` shares with `ftpack build`.
VERIFY_KEYS = ("template", "max_answer_tokens")


@click.command()
@click.argument("target", type=click.Path(path_type=Path))
@config_options(VERIFY_KEYS, help={
    "template": "Chat format (default: the build's; for a GGUF, recognised from its chat template).",
    "max_answer_tokens": "Longest answer allowed before 'did not stop' (default: the build's setting, else "
                         "the longest training answer + 25%, at least 16 tokens)."})
@click.option("--reference", type=click.Path(path_type=Path), default=None,
              help="F16 GGUF to measure quantization fidelity against (default: a build's own F16 GGUF).")
@click.option("--no-fidelity", is_flag=True, help="Only the smoke test: skip the fidelity measure.")
def verify(target: Path, reference: Path | None, no_fidelity: bool, **flags) -> None:
    """Check with llama.cpp that a build's model (or a GGUF) answers and stops.

    \b
    Asks one question (from the build's held-out data when it has some) with the chat
    template, and fails (exit 1) when the answer does not stop within the limit. With
    an F16 reference it also measures quantization fidelity (perplexity, top-1 agreement).
    Example: ftpack verify builds/my-qa
    """
    from ftpack.core.errors import bad_input
    from ftpack.inference.verify import verify_target
    from ftpack.settings import command_settings

    r = get_reporter()
    settings = command_settings(VERIFY_KEYS, given_flags(flags))
    if not target.exists():
        raise bad_input(f"Not found: {target}", "Give a build folder (builds/NAME) or a .gguf file.")
    report = verify_target(target, max_answer_tokens=settings["max_answer_tokens"], template_name=settings["template"],
                           reference=reference, measure_fidelity=not no_fidelity, reporter=r)
    r.result(report.as_dict())
    fidelity = report.fidelity_note or "fidelity not measured"
    if report.fidelity:
        fidelity = (f"top-1 agreement {report.fidelity['top1_agreement']:.1%}, perplexity "
                    f"x{report.fidelity['perplexity_ratio']}" + (f" ({report.fidelity_note})"
                                                                 if report.fidelity_note else ""))
    r.final(f"{Path(report.gguf).name} answers and stops ({report.answer_tokens} of {report.max_answer_tokens} "
            f"tokens); {fidelity}.", stopped=report.stopped)
