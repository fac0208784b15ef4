"""Checks at config load: what a value's type cannot say, found before the first expensive step.

Here the ones that need no domain's knowledge (the input files exist; the output folder is
new, empty or ftpack's own) and :func:`run_checks`, which every domain's checks go through.
Each domain checks its own settings beside the code that owns them
(:mod:`ftpack.gguf.settings`: ``--quant``, ``--imatrix``, the base's architecture,
``--ship``; :mod:`ftpack.ollama.settings`: ``--param``, ``--message``, ``--system``, the
model store, ``--ollama-base``; :mod:`ftpack.training.settings`: the dataset and where in it
the records are, ``--template``), and :mod:`ftpack.settings` composes them: `ftpack build` runs
them all when it loads its config, a step command only those of its own flags, so a typo fails
in a second, never after training.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ftpack.core.errors import bad_input

#: check(value, all values, label) -> the value, normalised; raises a user error (exit 2).
Check = Callable[[Any, Mapping[str, Any], str], Any]


def run_checks(checks: Mapping[str, Check], values: dict[str, Any], where: Mapping[str, str] | None = None, *,
               keys: Iterable[str] | None = None, default_out: Path | None = None) -> dict[str, Any]:
    """Run ``checks`` (key -> check, in their order) on ``values``, normalising them in place.

    ``keys`` limits the checks to a subcommand's settings; ``where`` names each value's
    source (a flag or a config file) for the messages; ``default_out`` is checked as
    ``out`` when no ``out`` is given.
    """
    where = where or {}
    keys = None if keys is None else set(keys)
    for key, check in checks.items():
        if keys is not None and key not in keys:
            continue
        value = values.get(key)
        if key == "out" and value is None:
            value = default_out
        if value is None:
            continue
        label = f"{key} ({where[key]})" if key in where else key
        checked = check(value, values, label)
        if key in values and values[key] is not None:
            values[key] = checked
    return values


def _check_input_file(value: Path, values: Mapping[str, Any], label: str) -> Path:
    if not Path(value).is_file():
        raise bad_input(f"{label}: file not found: {value}")
    return value


def _check_out(value: Path, values: Mapping[str, Any], label: str) -> Path:
    """The build folder: new, empty, or one ftpack wrote (never someone's folder or a file)."""
    path = Path(value)
    if int(os.environ.get("RANK", "0")) > 0:  # under a launcher rank 0 checked it and may be writing there now
        return value
    if path.exists() and not path.is_dir():
        raise bad_input(f"{label}: {path} is a file, not a build folder.",
                        "Choose a new folder for --out (or leave it out: builds/<name>).")
    if path.is_dir() and any(path.iterdir()) and not any((path / m).exists() for m in OUTPUT_MARKS):
        raise bad_input(f"{label}: {path} already holds files that ftpack did not write; a build there "
                        "could overwrite them.",
                        "Choose a new or empty folder for --out, or an earlier build folder of ftpack's.")
    return value


#: key -> check of the settings no domain owns: input files, the output folder.
CHECKS: dict[str, Check] = {"license": _check_input_file, "heldout": _check_input_file, "out": _check_out}

#: Files that mark a folder as ftpack's own output: a build's manifest, a `ftpack train` run.
OUTPUT_MARKS = ("build.json", "train_info.json", "checkpoints/ftpack-run.json")
