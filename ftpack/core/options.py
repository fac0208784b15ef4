"""Click options generated from :data:`ftpack.core.config.OPTIONS`.

Flags and config-file keys therefore never drift apart: every flag is the key in
kebab-case (plus short aliases), and a flag the user did not give arrives as None
so that the config file's value (or the default) stands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import click

from ftpack.core.config import OPTIONS, Option


def _click_option(opt: Option, help_text: str | None = None, extra_names: Iterable[str] = (),
                  required: bool = False) -> Callable:
    names = [opt.cli_flag, *opt.aliases, *extra_names]
    kw: dict[str, Any] = {"help": help_text or opt.help}
    if required:  # (click >= 8.3 counts an explicit default=None as given)
        kw["required"] = True
    else:
        kw["default"] = None
    if opt.type is bool:
        neg = "--no-" + opt.cli_flag[2:]
        return click.option(f"{opt.cli_flag}/{neg}", *opt.aliases, *extra_names, opt.key, **kw)
    if opt.default is not None and not opt.multiple:  # shown, but the value stays None when not given
        kw["help"] += f"  [default: {opt.default}]"
    if opt.multiple:
        kw["multiple"] = True
    if opt.choices:
        kw["type"] = click.Choice(opt.choices, case_sensitive=False)
    elif opt.type is Path:
        kw["type"] = click.Path(path_type=Path)
    elif opt.type is int:
        kw["type"] = int
    elif opt.type is float:
        kw["type"] = float
    kw["metavar"] = _metavar(opt)
    return click.option(*names, opt.key, **kw)


def _metavar(opt: Option) -> str | None:
    if opt.choices:
        return None
    if opt.key == "data":  # a file or folder, or a hub dataset id
        return "PATH|ORG/NAME"
    if opt.type is Path:
        return "PATH"
    if opt.type in (int, float):
        return "N"
    if opt.key == "parameters":
        return "KEY=VALUE"
    if opt.key == "messages":
        return "ROLE:TEXT"
    if opt.key == "data_columns":
        return "FIELD=COLUMN"
    return "TEXT"


def config_options(keys: Iterable[str] | None = None, *, exclude: Iterable[str] = (),
                   help: Mapping[str, str] | None = None, aliases: Mapping[str, Iterable[str]] | None = None,
                   required: Iterable[str] = ()) -> Callable:
    """Decorator adding one click option per OPTIONS entry (all, or just ``keys``).

    A subcommand may word a setting's help for itself (``help={"out": "Training output
    folder."}``), keep an older flag name (``aliases={"quant": ["--type"]}``) or make a
    setting ``required``; the key, type, checks and default stay those of OPTIONS.
    """
    wanted = set(keys) if keys is not None else None
    skip = set(exclude)
    selected = [o for o in OPTIONS if (wanted is None or o.key in wanted) and o.key not in skip]
    unknown = (set(help or {}) | set(aliases or {}) | set(required) | (wanted or set())) - {o.key for o in OPTIONS}
    if unknown:
        raise KeyError(f"not in OPTIONS: {sorted(unknown)}")
    help, aliases, required = dict(help or {}), dict(aliases or {}), set(required)

    def decorate(f: Callable) -> Callable:
        for opt in reversed(selected):
            f = _click_option(opt, help.get(opt.key), aliases.get(opt.key, ()), opt.key in required)(f)
        return f

    return decorate


def given_flags(params: dict[str, Any]) -> dict[str, Any]:
    """The config values the user actually passed on the command line."""
    keys = {o.key for o in OPTIONS}
    out = {}
    for k, v in params.items():
        if k in keys and v is not None and v != ():
            out[k] = list(v) if isinstance(v, tuple) else v
    return out
