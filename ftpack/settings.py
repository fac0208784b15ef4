"""Loading a build's settings: the one way a config is loaded, by `ftpack build`, `ftpack
train` and every step command.

:mod:`ftpack.core.config` merges defaults < config file < flags and coerces each value to
its option's type; what a type cannot say each domain checks beside the code that owns the
setting (:data:`ftpack.core.checks.CHECKS`: input files and the output folder;
:data:`ftpack.gguf.settings.CHECKS`: ``--quant``, ``--imatrix``, the base's architecture,
``--ship``; :data:`ftpack.ollama.settings.CHECKS`: ``--param``, ``--message``, ``--system``,
the model store, ``--ollama-base``; :data:`ftpack.training.settings.CHECKS`:
``--report-to``, ``--data``, ``--data-columns``, ``--template``). Here they are composed and run
at config load, so a typo or an unconvertible base fails in a second with exit 2, before torch
is imported and long before training.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from ftpack.core import checks as core_checks
from ftpack.core.checks import Check, run_checks
from ftpack.core.config import BuildConfig, default_build_dir, merge_command_settings, merge_settings
from ftpack.gguf import settings as gguf_settings
from ftpack.ollama import settings as ollama_settings
from ftpack.training import settings as training_settings

#: The order the checks run in: the first problem found is the one reported, and a check
#: may read a value an earlier one normalised (--quant reads --imatrix).
CHECK_ORDER = ("report_to", "data", "data_columns", "license", "imatrix", "heldout", "quant", "parameters",
               "messages", "system", "template", "out", "models_dir", "base", "ship", "ollama_base")


def compose_checks(*tables: Mapping[str, Check], order: Iterable[str] = CHECK_ORDER) -> dict[str, Check]:
    """One table of every domain's checks, in ``order`` (keys it does not name last); a
    setting checked by two domains is a mistake of ftpack's."""
    merged: dict[str, Check] = {}
    for table in tables:
        for key, check in table.items():
            if key in merged:
                raise RuntimeError(f"Two checks for the setting {key!r}.")
            merged[key] = check
    order = [key for key in order if key in merged]
    return {key: merged[key] for key in [*order, *(k for k in merged if k not in order)]}


#: key -> check(value, all values, label) -> normalised value, for every setting a type cannot check.
CHECKS = compose_checks(core_checks.CHECKS, gguf_settings.CHECKS, ollama_settings.CHECKS, training_settings.CHECKS)


def check_settings(values: dict[str, Any], where: Mapping[str, str] | None = None, *,
                   keys: Iterable[str] | None = None, default_out: Any = None) -> dict[str, Any]:
    """Check what a value's type cannot say (names llama.cpp, Ollama and templates/ know,
    files and folders on disk, the base's architecture), normalising names in place.

    ``keys`` limits the checks to a subcommand's settings; ``where`` names each value's source.
    """
    return run_checks(CHECKS, values, where, keys=keys, default_out=default_out)


def build_config(name: str, file_values: Mapping[str, Any] | None = None,
                 flag_values: Mapping[str, Any] | None = None, *, source: str = "config file") -> "BuildConfig":
    """Merge defaults < config file < CLI flags, validating every value.

    ``flag_values`` holds only the flags the user actually gave (None = not given).
    """
    values, where = merge_settings(name, file_values, flag_values, source=source)
    check_settings(values, where, default_out=default_build_dir(name))
    return BuildConfig(name=name, **values)


def command_settings(keys: Iterable[str], flag_values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The settings of a single-step command (`ftpack data`, `quantize`, `modelfile`...).

    Its flags over the OPTIONS defaults, each coerced and checked exactly as `ftpack
    build` does, so a subcommand and the build it is a step of can never disagree.
    """
    keys = list(keys)
    values, where = merge_command_settings(keys, flag_values)
    return check_settings(values, where, keys=keys)
