"""Where things live on the user's machine: one function per location, one env var each.

- ``FTPACK_HOME`` (default ``$XDG_DATA_HOME/ftpack``, i.e. ``~/.local/share/ftpack``):
  ftpack's own records, such as which Ollama models it registered.
- ``FTPACK_CACHE`` (default ``$XDG_CACHE_HOME/ftpack``, i.e. ``~/.cache/ftpack``):
  materialised bases, converted weights, llama.cpp's vendored converter.
- ``OLLAMA_MODELS``: Ollama's model store, else the user's ``~/.ollama/models``, else
  the store of a Linux service install (``/usr/share/ollama/.ollama/models``).
- ``HF_HOME`` / ``HF_HUB_CACHE``: Hugging Face's cache, used as the hub library uses it.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The store of Ollama's Linux service install (the `ollama` system user's home).
OLLAMA_SERVICE_MODELS = Path("/usr/share/ollama/.ollama/models")


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser() if value else None


def _xdg(name: str, fallback: str) -> Path:
    return _env_path(name) or Path.home() / fallback


def ftpack_home() -> Path:
    """ftpack's user folder: FTPACK_HOME, else $XDG_DATA_HOME/ftpack."""
    return _env_path("FTPACK_HOME") or _xdg("XDG_DATA_HOME", ".local/share") / "ftpack"


def cache_dir() -> Path:
    """ftpack's cache: FTPACK_CACHE, else $XDG_CACHE_HOME/ftpack."""
    return _env_path("FTPACK_CACHE") or _xdg("XDG_CACHE_HOME", ".cache") / "ftpack"


def user_ollama_models() -> Path:
    return Path.home() / ".ollama" / "models"


def ollama_models_dir() -> Path:
    """The Ollama store a local `ollama serve` uses.

    OLLAMA_MODELS always wins; else the user's own store when it exists; else the Linux
    service's store when that exists (the install script runs `ollama serve` as the
    `ollama` user); else the user's store (created on first write).
    """
    env = _env_path("OLLAMA_MODELS")
    if env is not None:
        return env
    user = user_ollama_models()
    if not user.exists() and OLLAMA_SERVICE_MODELS.exists():
        return OLLAMA_SERVICE_MODELS
    return user


def hf_hub_cache() -> Path:
    """Hugging Face's hub cache, as huggingface_hub resolves it."""
    explicit = _env_path("HF_HUB_CACHE")
    if explicit is not None:
        return explicit
    home = _env_path("HF_HOME") or _xdg("XDG_CACHE_HOME", ".cache") / "huggingface"
    return home / "hub"
