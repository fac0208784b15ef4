"""The Ollama side's checks at config load: what `ollama create` would refuse, found before training.

``--param`` names and value types, ``--message`` roles and texts, the ``--system`` text (all
as a Modelfile must hold them), the model store folder and the ``--ollama-base`` name. Each
is a check of :data:`CHECKS` (``check(value, all values, label) -> normalised value``), run
by :func:`ftpack.core.checks.run_checks` when :mod:`ftpack.settings` loads a config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ftpack.core.checks import Check
from ftpack.core.errors import FtpackError, bad_input


def _check_parameters(value: tuple[str, ...], values: Mapping[str, Any], label: str) -> tuple[str, ...]:
    """Ollama PARAMETER names and value types (what `ollama create` would refuse)."""
    from ftpack.ollama.modelfile import parse_parameter_args, quote_value

    for name, text in parse_parameter_args(value):
        quote_value(text, f"{label}: {name}")
    return value


def _check_messages(value: tuple[str, ...], values: Mapping[str, Any], label: str) -> tuple[str, ...]:
    """MESSAGE roles (system, user, assistant) and texts a Modelfile can hold."""
    from ftpack.ollama.modelfile import parse_message_args, quote_value

    for role, text in parse_message_args(value):
        quote_value(text, f"{label}: {role}")
    return value


def _check_system(value: str, values: Mapping[str, Any], label: str) -> str:
    from ftpack.ollama.modelfile import quote_value

    quote_value(value, f"{label}, the Modelfile's SYSTEM")
    return value


def _check_models_dir(value: Path, values: Mapping[str, Any], label: str) -> Path:
    if Path(value).exists() and not Path(value).is_dir():
        raise bad_input(f"{label}: {value} is a file, not an Ollama model store folder.")
    return value


def _check_ollama_base(value: str, values: Mapping[str, Any], label: str) -> str:
    from ftpack.ollama.names import parse_model_name

    try:
        parse_model_name(value)
    except FtpackError as exc:
        raise bad_input(f"{label}: {exc.message}", exc.hint) from None
    return value


#: key -> check of the settings the Ollama side owns.
CHECKS: dict[str, Check] = {
    "parameters": _check_parameters, "messages": _check_messages, "system": _check_system,
    "models_dir": _check_models_dir, "ollama_base": _check_ollama_base,
}
