"""`ftpack build`: the whole pipeline (being assembled; see the issue tracker)."""

from __future__ import annotations

import click

from ..errors import FtpackError


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("name")
@click.pass_context
def build(ctx: click.Context, name: str) -> None:
    """Run the whole pipeline: data to a model you can `ollama run`."""
    raise FtpackError("`ftpack build` is not available yet in this version of ftpack.",
                      "The pipeline's stages are being built; run `ftpack --help` for what works now.")
