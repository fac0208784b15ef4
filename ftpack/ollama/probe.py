"""Is an Ollama server answering? The one reachability probe (doctor, `register auto`, roundtrip).

A quick ``GET /api/version`` with a short timeout; never raises. Talking to the server
for real (create, chat, list) goes through :class:`ftpack.ollama.api.OllamaServer`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerProbe:
    """What one probe found: where it asked, and the version or why there was no answer."""

    host: str
    version: str | None = None
    reason: str | None = None  # why the server is not reachable

    @property
    def reachable(self) -> bool:
        return self.version is not None


def probe_server(host: str | None = None, *, timeout: float = 2.0) -> ServerProbe:
    """Ask ``host`` (else OLLAMA_HOST, else the default) for its version, within ``timeout`` seconds."""
    import urllib.error
    import urllib.request

    from ftpack.ollama.api import resolve_host

    url = resolve_host(host)
    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=timeout) as resp:
            body = json.loads(resp.read().decode("utf-8", errors="replace"))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return ServerProbe(url, reason=str(getattr(exc, "reason", exc)))
    if not isinstance(body, dict) or "version" not in body:
        return ServerProbe(url, reason="answered /api/version with something that is not Ollama")
    return ServerProbe(url, version=str(body["version"]))
