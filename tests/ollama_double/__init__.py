"""A faithful double of Ollama's HTTP API and on-disk store, for tests (see server.py)."""

from .server import OllamaDouble, Store, parse_name

__all__ = ["OllamaDouble", "Store", "parse_name"]
