"""Which Ollama models ftpack made: the registration index, ``FTPACK_HOME/registered.json``.

Each registration adds an entry: the model name, ``where`` it was written
(``server:<url>`` or ``store:<path>``), the manifest digest Ollama stores for it, the
model layer's digest, and the build it came from (build dir, base, method, quant).

A model counts as ftpack's when an entry has its name and its *current* manifest
digest, wherever that entry was written. The manifest digest is the sha256 of the
manifest file, the same whether read from the store or from a server's ``/api/tags``,
so a model written offline and later served (or re-registered) by an ``ollama serve``
on that store is still recognised; a model re-created by other means has another
digest and is no longer claimed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from ftpack.core.locations import ftpack_home
from ftpack.ollama.names import ModelName, names_match, parse_model_name

INDEX_VERSION = 1


def index_path() -> Path:
    return ftpack_home() / "registered.json"


def server_where(host: str) -> str:
    """The ``where`` of a registration through the server at ``host`` (a base URL)."""
    return f"server:{host}"


def store_where(models_dir: str | os.PathLike) -> str:
    """The ``where`` of a registration written into the store at ``models_dir``."""
    return f"store:{Path(models_dir).expanduser().resolve()}"


def place_of(where: str) -> str:
    """The human part of a ``where``: the server URL or the store path."""
    return where.split(":", 1)[1]


def load_index() -> list[dict[str, Any]]:
    """The registrations ftpack recorded (newest last); a damaged file counts as empty."""
    try:
        data = json.loads(index_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [e for e in data.get("models", []) if isinstance(e, dict)] if isinstance(data, dict) else []


def save_index(entries: Iterable[dict[str, Any]]) -> None:
    from ftpack.core.atomic import write_json

    write_json(index_path(), {"version": INDEX_VERSION, "models": list(entries)})


def _at(entry: dict[str, Any], where: str, name: ModelName) -> bool:
    return entry.get("where") == where and names_match(entry.get("name", ""), name)


def record_registration(entry: dict[str, Any]) -> None:
    """Remember that ftpack created ``entry['name']`` at ``entry['where']`` (replacing what it had there)."""
    name = parse_model_name(entry["name"])
    save_index([e for e in load_index() if not _at(e, entry["where"], name)] + [entry])


def forget_registration(where: str, name: str) -> None:
    """Drop the entry for ``name`` at ``where`` (after the model was removed there)."""
    parsed = parse_model_name(name)
    save_index([e for e in load_index() if not _at(e, where, parsed)])


def find_registration(name: ModelName, manifest_digest: str | None) -> dict[str, Any] | None:
    """The newest entry for ``name`` whose manifest digest is ``manifest_digest``, else None."""
    if not manifest_digest:
        return None
    for e in reversed(load_index()):
        if e.get("manifest_digest") == manifest_digest and names_match(e.get("name", ""), name):
            return e
    return None
