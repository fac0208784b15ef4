"""Registering, listing, removing and chatting with models through Ollama's HTTP API.

Uses the official ``ollama`` Python client for create / list / show / delete / chat, and
plain ``httpx`` (the client's own transport) for the two calls it does not cover the way
ftpack needs: ``HEAD /api/blobs/<digest>`` (so a blob the server already has is never
sent again) and the upload itself (streamed in chunks to drive a byte progress bar).

Every failure becomes an :class:`FtpackError` that says what to do: the server is not
reachable (start it / set OLLAMA_HOST), too old for the files-based create API (0.5.5),
a digest mismatch, or Ollama's own error text for an HTTP error. Nothing the build made
is touched by a failure: run ``ftpack register`` again to retry.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ftpack.core.errors import FtpackError, bad_input
from ftpack.ollama.store import (ModelName, RegistrationRequest, parse_model_name, read_gguf_summary, record_registration)

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


def server_where(host: str) -> str:
    return f"server:{host}"


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

    def model_exists(self, name: str) -> bool:
        import ollama

        try:
            self.client.show(name)
            return True
        except ollama.ResponseError as exc:
            if exc.status_code == 404:
                return False
            raise _http_error(f"POST /api/show {name}", exc.status_code, exc.error, self.host) from None
        except ConnectionError as exc:
            raise _unreachable(self.host, exc) from None

    def create(self, name: str, files: dict[str, str], adapters: dict[str, str] | None,
               req: RegistrationRequest) -> Iterator[str]:
        """POST /api/create (streamed); yields the server's status lines."""
        stream = self._call(
            self.client.create, name, files=files, adapters=adapters or None, template=req.template or None,
            system=req.system or None, parameters=req.parameters or None,
            messages=req.messages or None, license=req.licenses or None, stream=True, what="POST /api/create")
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


# -- registration -------------------------------------------------------------------------------

@dataclass
class RegisterResult:
    name: str  # display name (what `ollama run` takes)
    where: str
    manifest_digest: str | None
    model_digest: str
    uploaded_bytes: int
    statuses: list[str]


def _refuse_existing(display: str, place: str, where: str, digest: str | None, force: bool | str) -> None:
    """Existing model: refuse unless ``force`` (True) or, with ``force="own"``, it is ftpack's own."""
    from ftpack.ollama.store import find_registration

    if force is True:
        return
    if force == "own" and digest is not None and find_registration(where, parse_model_name(display), digest):
        return
    if force == "own":
        raise FtpackError(f"Model {display} already exists in Ollama ({place}) and was not created by this "
                          "ftpack build; refusing to overwrite it.",
                          f"Choose another build name, or remove it first (`ollama rm {display}`).", code=2)
    raise FtpackError(f"Model {display} already exists in Ollama ({place}).",
                      "Pass --force to replace it, or choose another name.", code=2)


def register_with_server(name: str, req: RegistrationRequest, *, host: str | None = None,
                         force: bool | str = False, reporter=None) -> RegisterResult:
    """Upload missing blobs (HEAD first) and POST /api/create; stream status lines to the reporter."""
    from ftpack.core.atomic import sha256_file
    from ftpack.core.report import get_reporter

    reporter = reporter or get_reporter()
    parsed = parse_model_name(name)
    with OllamaServer(host) as server:
        version = server.require_create_api()
        reporter.info(f"Ollama {version} at {server.host}")
        if server.model_exists(parsed.display):
            digest = next((m.get("digest") for m in server.list_models()
                           if _same(m.get("model") or m.get("name") or "", parsed)), None)
            _refuse_existing(parsed.display, f"server {server.host}", server_where(server.host), digest, force)
        uploaded = 0
        digests: dict[str, str] = {}
        for path in [req.model_path] + ([req.adapter_path] if req.adapter_path else []):
            path = Path(path)
            digest = "sha256:" + sha256_file(path)
            digests[str(path)] = digest
            if server.has_blob(digest):
                reporter.info(f"{path.name}: the server already has blob {digest[:19]}…, not uploading")
            else:
                uploaded += server.upload_blob(path, digest, reporter)
        files = {req.model_path.name: digests[str(req.model_path)]}
        adapters = {Path(req.adapter_path).name: digests[str(req.adapter_path)]} if req.adapter_path else None
        statuses = []
        for status in server.create(parsed.display, files, adapters, req):
            statuses.append(status)
            reporter.info(f"ollama: {status}")
            reporter.event("ollama_status", status=status)
        if not statuses or statuses[-1] != "success":
            raise FtpackError(f"Ollama did not confirm the creation of {parsed.display} "
                              f"(last status: {statuses[-1] if statuses else 'none'}).",
                              "Check the server's log and run the same command again.")
        manifest_digest = next((m.get("digest") for m in server.list_models()
                                if _same(m.get("model") or m.get("name") or "", parsed)), None)
        return RegisterResult(parsed.display, server_where(server.host), manifest_digest,
                              digests[str(req.model_path)], uploaded, statuses)


def _same(text: str, name: ModelName) -> bool:
    try:
        return parse_model_name(text).same_as(name)
    except FtpackError:
        return False


def register_offline(name: str, req: RegistrationRequest, *, models_dir: str | os.PathLike | None = None,
                     force: bool | str = False, reporter=None) -> RegisterResult:
    """Write the model into Ollama's store (see :mod:`ftpack.ollama.store`)."""
    from ftpack.ollama.store import default_models_dir, find_store_model, store_where, write_model

    models_dir = Path(models_dir).expanduser() if models_dir else default_models_dir()
    existing = find_store_model(models_dir, parse_model_name(name)) if models_dir.exists() else None
    if existing is not None:
        _refuse_existing(existing.name.display, str(models_dir), store_where(models_dir), existing.digest, force)
    res = write_model(models_dir, name, req, force=existing is not None, reporter=reporter)
    return RegisterResult(res.name.display, store_where(models_dir), res.manifest_digest, res.model_digest,
                          res.bytes_copied, [])


def registration_entry(result: RegisterResult, req: RegistrationRequest, *, build_dir: Path | None = None,
                       base: str | None = None, method: str | None = None) -> dict[str, Any]:
    """The index entry `ftpack list` uses to recognise this model as ftpack's."""
    summary = read_gguf_summary(req.model_path)
    return {"name": result.name, "where": result.where, "manifest_digest": result.manifest_digest,
            "model_digest": result.model_digest, "gguf": str(Path(req.model_path).resolve()),
            "build_dir": str(build_dir.resolve()) if build_dir else None, "base": base, "method": method,
            "quant": summary.file_type, "registered_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def build_info_for(modelfile: Path) -> tuple[Path | None, str | None, str | None]:
    """(build dir, base, method) when the Modelfile sits in a build dir (<build>/ollama/Modelfile)."""
    import json

    for folder in (modelfile.resolve().parent.parent, modelfile.resolve().parent):
        manifest = folder / "build.json"
        if manifest.is_file():
            try:
                data = json.loads(manifest.read_text(encoding="utf-8"))
            except ValueError:
                return folder, None, None
            cfg = data.get("config", {})
            method = (data.get("stages", {}).get("train", {}).get("metrics", {}) or {}).get("method") or cfg.get("method")
            return folder, cfg.get("base"), method
    return None, None, None


def register(name: str, modelfile: str | os.PathLike, *, mode: str = "server", host: str | None = None,
             models_dir: str | os.PathLike | None = None, force: bool | str = False, reporter=None,
             build_dir: Path | None = None, base: str | None = None, method: str | None = None) -> RegisterResult:
    """Register the GGUF a Modelfile points at, with everything the Modelfile says.

    ``mode`` is "server" (OLLAMA_HOST / ``host``) or "offline" (``models_dir``). An existing
    model of that name is refused unless ``force`` is True, or ``force="own"`` and ftpack
    registered it (what a rebuild does). Records the result in ftpack's index so
    ``ftpack list`` can tell ftpack's models apart.
    """
    from ftpack.core.report import get_reporter

    reporter = reporter or get_reporter()
    parse_model_name(name)
    modelfile = Path(modelfile)
    req = RegistrationRequest.from_modelfile(modelfile)
    if build_dir is None:
        build_dir, base2, method2 = build_info_for(modelfile)
        base, method = base or base2, method or method2
    if mode == "offline":
        result = register_offline(name, req, models_dir=models_dir, force=force, reporter=reporter)
    elif mode == "server":
        result = register_with_server(name, req, host=host, force=force, reporter=reporter)
    else:
        raise bad_input(f"Unknown registration mode {mode!r}: use server or offline.")
    record_registration(registration_entry(result, req, build_dir=build_dir, base=base, method=method))
    return result


# -- list / remove ------------------------------------------------------------------------------

@dataclass
class ListedModel:
    name: str
    size: int
    quant: str
    digest: str
    modified: str
    ftpack: dict[str, Any] | None  # the index entry when ftpack made it


def list_models(*, offline: bool = False, host: str | None = None,
                models_dir: str | os.PathLike | None = None) -> tuple[str, list[ListedModel]]:
    """(where, models) from the server or the store, each marked with ftpack's index entry."""
    from ftpack.ollama.store import default_models_dir, find_registration, store_models, store_where

    out: list[ListedModel] = []
    if offline:
        root = Path(models_dir).expanduser() if models_dir else default_models_dir()
        where = store_where(root)
        for m in store_models(root):
            out.append(ListedModel(m.name.display, m.size, m.config.get("file_type", ""), m.digest,
                                   m.modified.isoformat(timespec="seconds"),
                                   find_registration(where, m.name, m.digest)))
        return where, out
    with OllamaServer(host) as server:
        where = server_where(server.host)
        for m in server.list_models():
            display = m.get("model") or m.get("name") or ""
            try:
                parsed = parse_model_name(display)
            except FtpackError:
                continue
            details = m.get("details") or {}
            modified = m.get("modified_at")
            out.append(ListedModel(parsed.display, int(m.get("size") or 0), details.get("quantization_level") or "",
                                   m.get("digest") or "", modified.isoformat(timespec="seconds")
                                   if hasattr(modified, "isoformat") else str(modified or ""),
                                   find_registration(where, parsed, m.get("digest") or "")))
    return where, out


def remove(name: str, *, offline: bool = False, host: str | None = None,
           models_dir: str | os.PathLike | None = None, force: bool = False) -> str:
    """Delete a model (server or store), keeping blobs other models share; returns ``where``.

    Refuses a model ftpack did not create unless ``force`` (a typo should not delete
    someone's model).
    """
    from ftpack.ollama.store import default_models_dir, forget_registration, remove_model

    parsed = parse_model_name(name)
    where, models = list_models(offline=offline, host=host, models_dir=models_dir)
    match = next((m for m in models if parse_model_name(m.name).same_as(parsed)), None)
    place = where.split(":", 1)[1]
    if match is None:
        raise FtpackError(f"Model {parsed.display} is not in Ollama ({place}).",
                          "`ftpack list --all` shows what is there.", code=2)
    if match.ftpack is None and not force:
        raise FtpackError(f"Model {match.name} was not created by ftpack (or was changed since); not removing it.",
                          "Pass --force to remove it anyway, or use `ollama rm`.", code=2)
    if offline:
        remove_model(Path(models_dir).expanduser() if models_dir else default_models_dir(), match.name)
    else:
        with OllamaServer(host) as server:
            server.delete(match.name)
    forget_registration(where, match.name)
    return where


# -- the pipeline stage ----------------------------------------------------------------------------

def run_register_stage(ctx):
    """Stage `register`: create the model in Ollama from ``ollama/Modelfile``.

    Reads: ``ctx.upstream_path("modelfile")`` (the Modelfile, FROM relative to it), config
    ``register`` (server | offline; "none" disables the stage), ``host``, ``models_dir``;
    the model name is the build's name. Replaces a model of that name only when ftpack
    registered it (a rebuild); anyone else's model is refused. Writes: ``register/registration.json``; metrics:
    mode, name, where, model_digest, manifest_digest, uploaded_bytes, run (the command to try).
    """
    from ftpack.core.atomic import write_json
    from ftpack.core.runner import StageResult

    cfg = ctx.config
    mode = cfg.register
    if mode not in ("server", "offline"):
        raise bad_input(f"register = {mode!r}: the register stage needs server or offline.")
    modelfile = ctx.upstream_path("modelfile")
    method = None
    try:
        method = ctx.upstream("train").metrics.get("method")
    except FtpackError:
        pass
    result = register(cfg.name, modelfile, mode=mode, host=cfg.host, models_dir=cfg.models_dir, force="own",
                      reporter=ctx.reporter, build_dir=ctx.build_dir, base=cfg.base, method=method or cfg.method)
    run = f"ollama run {result.name.removesuffix(':latest')}"
    out = ctx.stage_dir / "registration.json"
    metrics = {"mode": mode, "name": result.name, "where": result.where, "model_digest": result.model_digest,
               "manifest_digest": result.manifest_digest, "uploaded_bytes": result.uploaded_bytes, "run": run}
    write_json(out, metrics)
    ctx.reporter.info(f"registered {result.name}: try `{run}`")
    return StageResult(outputs=[out], main_output=out, metrics=metrics)


__all__ = ["OllamaServer", "register", "register_with_server", "register_offline", "list_models", "remove",
           "resolve_host", "run_register_stage", "RegisterResult", "ModelName"]
