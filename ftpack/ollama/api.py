"""A client for Ollama's HTTP API: version, blobs, create, list, show, delete, chat.

Uses the official ``ollama`` Python client for create / list / show / delete / chat, and
plain ``httpx`` (the client's own transport) for the two calls it does not cover the way
ftpack needs: ``HEAD /api/blobs/<digest>`` (so a blob the server already has is never
sent again) and the upload itself (streamed in chunks to drive a byte progress bar).

Every failure becomes an :class:`FtpackError` that says what to do: the server is not
reachable (start it / set OLLAMA_HOST), too old for the files-based create API (0.5.5),
a digest mismatch, or Ollama's own error text for an HTTP error. Nothing the build made
is touched by a failure: run the same command again to retry. Registration itself
(server or offline, and ftpack's index) is :mod:`ftpack.ollama.registration`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterator

from ftpack.core.errors import FtpackError
from ftpack.ollama.names import ModelName, names_match
from ftpack.ollama.request import RegistrationRequest

#: The first Ollama release whose /api/create takes `files` (digests of uploaded blobs).
MIN_CREATE_VERSION = (0, 5, 5)
DEFAULT_HOST = "http://127.0.0.1:11434"
UPLOAD_CHUNK = 1 << 22


def resolve_host(host: str | None = None) -> str:
    """The server's base URL: ``host``, else OLLAMA_HOST, else http://127.0.0.1:11434."""
    raw = (host or os.environ.get("OLLAMA_HOST", "") or "").strip()
    if not raw:
        return DEFAULT_HOST
    if "://" not in raw:
        raw = "http://" + raw
    scheme, _, rest = raw.partition("://")
    hostport, _, path = rest.partition("/")
    if hostport.startswith(":"):
        hostport = "127.0.0.1" + hostport
    if ":" not in hostport.rsplit("]", 1)[-1]:
        hostport += ":11434" if scheme == "http" else ":443"
    if hostport.startswith("0.0.0.0"):
        hostport = "127.0.0.1" + hostport[len("0.0.0.0"):]
    path = path.strip("/")
    return f"{scheme}://{hostport}" + (f"/{path}" if path else "")


def _version_tuple(v: str) -> tuple[int, int, int]:
    nums = [int(x) for x in re.findall(r"\d+", v.split("-")[0].split("+")[0])[:3]]
    return tuple(nums + [0] * (3 - len(nums)))  # type: ignore[return-value]


def _unreachable(host: str, exc: BaseException | str) -> FtpackError:
    return FtpackError(
        f"Ollama server not reachable at {host} ({exc}).",
        "Start it with `ollama serve` (or the Ollama app), or set OLLAMA_HOST / --host to where it runs; "
        "--offline works on Ollama's model store directly instead. Nothing was changed: run the same "
        "command again once the server answers.")


class OllamaServer:
    """A connection to one Ollama server (official client + raw httpx for blobs)."""

    def __init__(self, host: str | None = None, *, timeout: float = 30.0):
        import httpx
        import ollama

        self.host = resolve_host(host)
        self._http = httpx.Client(base_url=self.host, timeout=httpx.Timeout(timeout, read=None))
        self.client = ollama.Client(host=self.host, timeout=httpx.Timeout(timeout, read=None))
        self._version: str | None = None

    def close(self) -> None:
        self._http.close()
        self.client.close()

    def __enter__(self) -> "OllamaServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- raw calls --------------------------------------------------------------------
    def _raw(self, method: str, path: str, **kw):
        import httpx

        try:
            return self._http.request(method, path, **kw)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise _unreachable(self.host, exc) from None
        except httpx.HTTPError as exc:
            raise FtpackError(f"Ollama server at {self.host}: {type(exc).__name__}: {exc}",
                              "Check the server's log; run the same command again to retry.") from None

    def _call(self, fn, *args, what: str, not_found: str | None = None, **kw):
        """Run an official-client call; translate its errors into FtpackErrors."""
        import httpx
        import ollama

        try:
            return fn(*args, **kw)
        except ollama.ResponseError as exc:
            if exc.status_code == 404 and not_found is not None:
                raise FtpackError(not_found, code=2) from None
            raise _http_error(what, exc.status_code, exc.error, self.host) from None
        except (ConnectionError, httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise _unreachable(self.host, exc) from None
        except httpx.HTTPError as exc:
            raise FtpackError(f"{what}: {type(exc).__name__}: {exc}",
                              "Check the server's log; run the same command again to retry.") from None

    def version(self) -> str:
        if self._version is None:
            r = self._raw("GET", "/api/version")
            if r.status_code != 200:
                raise _http_error("GET /api/version", r.status_code, _error_text(r), self.host)
            try:
                self._version = str(r.json().get("version", "0.0.0"))
            except ValueError:
                raise FtpackError(f"{self.host} answered /api/version with something that is not Ollama.",
                                  "Check OLLAMA_HOST / --host.") from None
        return self._version

    def require_create_api(self) -> str:
        """The server version, or an error naming the version the files-based create needs."""
        v = self.version()
        if _version_tuple(v) < MIN_CREATE_VERSION:
            need = ".".join(map(str, MIN_CREATE_VERSION))
            raise FtpackError(f"Ollama {v} at {self.host} is too old: registering a GGUF needs Ollama {need} or "
                              "newer (the files-based /api/create).",
                              "Update Ollama (https://ollama.com/download), or use --offline to write its model "
                              "store directly.")
        return v

    def has_blob(self, digest: str) -> bool:
        r = self._raw("HEAD", f"/api/blobs/{digest}")
        if r.status_code == 200:
            return True
        if r.status_code == 404:
            return False
        raise _http_error(f"HEAD /api/blobs/{digest}", r.status_code, _error_text(r), self.host)

    def upload_blob(self, path: Path, digest: str, reporter) -> int:
        """POST the file's bytes to /api/blobs/<digest> with a byte progress bar; returns bytes sent."""
        size = path.stat().st_size
        with reporter.progress(f"uploading {path.name}", total=size, unit="bytes") as bar:
            def chunks() -> Iterator[bytes]:
                with open(path, "rb") as fh:
                    while chunk := fh.read(UPLOAD_CHUNK):
                        bar.advance(len(chunk))
                        yield chunk

            r = self._raw("POST", f"/api/blobs/{digest}", content=chunks(),
                          headers={"Content-Length": str(size)})
        if r.status_code in (200, 201):
            return size
        text = _error_text(r)
        if r.status_code == 400 and "digest mismatch" in text:
            raise FtpackError(f"Upload of {path} failed: {text}.",
                              "The file changed while it was read (or the transfer was corrupted); make sure "
                              "nothing writes it and run the same command again.")
        raise _http_error(f"upload of {path.name}", r.status_code, text, self.host)

    def accepts_adapters(self) -> tuple[bool, str | None]:
        """(whether /api/create takes ``adapters``, the server's words when not), without side effects.

        A create with one (never uploaded) adapter digest and an invalid model name: servers
        that take adapters check the name and answer "invalid model name"; newer ones that
        dropped LoRA adapters refuse the adapter first. Nothing is created either way.
        """
        r = self._raw("POST", "/api/create", json={"model": "!probe", "stream": False,
                                                  "adapters": {"probe.gguf": "sha256:" + "0" * 64}})
        text = _error_text(r) if r.status_code != 200 else ""
        if "adapter" in text.lower():
            return False, f"Ollama {self.version()} at {self.host}: {text}"
        return True, None

    def create(self, name: str, files: dict[str, str] | None, adapters: dict[str, str] | None,
               req: RegistrationRequest) -> Iterator[str]:
        """POST /api/create (streamed); yields the server's status lines. ``req.from_model``
        becomes ``from`` (the new model starts from that model's layers)."""
        from ollama._types import CreateRequest, ProgressResponse

        payload = CreateRequest(
            model=name, stream=True, from_=req.from_model or None, files=files or None, adapters=adapters or None,
            template=req.template or None, system=req.system or None, parameters=req.parameters or None,
            messages=req.messages or None, license=req.licenses or None).model_dump(exclude_none=True)
        payload.update(req.create_fields())  # renderer, parser, requires, capabilities: no client argument
        stream = self._call(self.client._request, ProgressResponse, "POST", "/api/create", json=payload, stream=True,
                            what="POST /api/create")
        it = iter(stream)
        while True:
            part = self._call(next, it, None, what="POST /api/create")
            if part is None:
                return
            if part.status:
                yield part.status

    def list_models(self) -> list[dict[str, Any]]:
        resp = self._call(self.client.list, what="GET /api/tags")
        return [m.model_dump() if hasattr(m, "model_dump") else dict(m) for m in resp.models]

    def find_model(self, name: ModelName) -> dict[str, Any] | None:
        """The /api/tags entry of ``name`` (Ollama matches names case-insensitively), else None."""
        return next((m for m in self.list_models() if names_match(m.get("model") or m.get("name") or "", name)),
                    None)

    def show(self, name: str) -> dict[str, Any] | None:
        """POST /api/show (Modelfile, template, parameters, details); None when the server
        does not have ``name``."""
        import ollama

        def show_or_none():
            try:
                return self.client.show(name)
            except ollama.ResponseError as exc:
                if exc.status_code == 404:
                    return None
                raise

        resp = self._call(show_or_none, what=f"POST /api/show {name}")
        if resp is None:
            return None
        return resp.model_dump() if hasattr(resp, "model_dump") else dict(resp)

    def delete(self, name: str) -> None:
        self._call(self.client.delete, name, what=f"DELETE /api/delete {name}",
                   not_found=f"Model {name} is not on the Ollama server at {self.host}.")

    def chat(self, name: str, messages: list[dict[str, str]], *, options: dict[str, Any] | None = None,
             stream: bool = True) -> Iterator[str]:
        """Stream the assistant's answer from POST /api/chat."""
        parts = self._call(self.client.chat, name, messages=messages, options=options, stream=stream,
                           what=f"POST /api/chat {name}",
                           not_found=f"Model {name} is not on the Ollama server at {self.host}.")
        if not stream:
            yield parts.message.content or ""
            return
        it = iter(parts)
        while True:
            part = self._call(next, it, None, what=f"POST /api/chat {name}")
            if part is None:
                return
            yield part.message.content or ""


    def chat_answer(self, name: str, messages: list[dict[str, str]], *, options: dict[str, Any] | None = None
                    ) -> tuple[str, str | None]:
        """(the whole answer, ``done_reason``) of one streamed POST /api/chat."""
        parts = self._call(self.client.chat, name, messages=messages, options=options, stream=True,
                           what=f"POST /api/chat {name}",
                           not_found=f"Model {name} is not on the Ollama server at {self.host}.")
        text, reason, it = [], None, iter(parts)
        while (part := self._call(next, it, None, what=f"POST /api/chat {name}")) is not None:
            text.append(part.message.content or "")
            reason = getattr(part, "done_reason", None) or reason
        return "".join(text), reason


def _error_text(r) -> str:
    try:
        return str(r.json().get("error") or r.text).strip()
    except ValueError:
        return (r.text or "").strip() or f"HTTP {r.status_code}"


def _http_error(what: str, status: int, text: str, host: str) -> FtpackError:
    """Ollama's own error text, with the request and the status code."""
    import json

    try:
        text = json.loads(text).get("error", text)
    except (ValueError, AttributeError):
        pass
    hint = "Your build is kept; fix the cause and run the same command again."
    if status == 404 and "/api/" in what and "create" in what:
        hint = "Is this an Ollama server? " + hint
    code = 2 if status == 400 else 1
    return FtpackError(f"Ollama ({host}) refused {what}: {text} (HTTP {status})." if status > 0 else
                       f"Ollama ({host}) failed {what}: {text}.", hint, code=code)
