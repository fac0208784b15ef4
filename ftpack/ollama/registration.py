"""Registering a build's model in Ollama, and listing or removing the models ftpack made.

Two ways to register the same content (a :class:`RegistrationRequest` read from the
Modelfile): through a running server (:class:`ftpack.ollama.api.OllamaServer`: upload
the blobs it lacks, then ``/api/create``), or offline, writing Ollama's store directly
(:func:`ftpack.ollama.store.write_model`). Each registration is recorded in ftpack's
index (:mod:`ftpack.ollama.index`), so ``ftpack list`` and ``ftpack remove`` can tell
ftpack's models from everyone else's, and a rebuild replaces only its own model.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftpack.core.errors import FtpackError, bad_input
from ftpack.ollama.index import (find_registration, forget_registration, place_of, record_registration,
                                 server_where, store_where)
from ftpack.ollama.names import names_match, parse_model_name
from ftpack.ollama.request import RegistrationRequest

REGISTER_MODES = ("server", "offline")


@dataclass
class RegisterResult:
    name: str  # display name (what `ollama run` takes)
    where: str  # "server:<url>" or "store:<path>" (ftpack.ollama.index)
    manifest_digest: str | None
    model_digest: str
    uploaded_bytes: int  # bytes sent to the server, or copied into the store
    statuses: list[str]  # the server's status lines (none offline)
    store: Path | None = None  # the store written (offline)

    @property
    def place(self) -> str:
        """Where the model now is, in words (the store written, or the server)."""
        return f"the Ollama store at {self.store}" if self.store else f"Ollama at {place_of(self.where)}"


def _refuse_existing(display: str, place: str, digest: str | None, force: bool | str) -> None:
    """Existing model: refuse unless ``force`` (True) or, with ``force="own"``, ftpack made it."""
    if force is True:
        return
    if force == "own" and find_registration(parse_model_name(display), digest):
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
    from ftpack.ollama.api import OllamaServer

    reporter = reporter or get_reporter()
    parsed = parse_model_name(name)
    with OllamaServer(host) as server:
        version = server.require_create_api()
        reporter.info(f"Ollama {version} at {server.host}")
        existing = server.find_model(parsed)
        if existing is not None:
            _refuse_existing(parsed.display, f"server {server.host}", existing.get("digest"), force)
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
        created = server.find_model(parsed)
        return RegisterResult(parsed.display, server_where(server.host), created.get("digest") if created else None,
                              digests[str(req.model_path)], uploaded, statuses)


def register_offline(name: str, req: RegistrationRequest, *, models_dir: str | os.PathLike | None = None,
                     force: bool | str = False, reporter=None) -> RegisterResult:
    """Write the model into Ollama's store: ``models_dir``, else the one a local server uses
    (:func:`ftpack.core.locations.ollama_models_dir`); says which store it wrote."""
    from ftpack.core.locations import ollama_models_dir
    from ftpack.core.report import get_reporter
    from ftpack.ollama.store import find_store_model, write_model

    reporter = reporter or get_reporter()
    models_dir = Path(models_dir).expanduser() if models_dir else ollama_models_dir()
    reporter.info(f"Ollama store: {models_dir}", store=str(models_dir))
    existing = find_store_model(models_dir, parse_model_name(name)) if models_dir.exists() else None
    if existing is not None:
        _refuse_existing(existing.name.display, str(models_dir), existing.digest, force)
    try:
        res = write_model(models_dir, name, req, force=existing is not None, reporter=reporter)
    except PermissionError as exc:
        raise FtpackError(f"Cannot write the Ollama store at {models_dir} ({exc.strerror}: {exc.filename}).",
                          "A Linux service install's store belongs to the `ollama` user: register through the "
                          "running server instead (without --offline), or pick a store you own with "
                          "--models-dir / OLLAMA_MODELS.") from None
    return RegisterResult(res.name.display, store_where(models_dir), res.manifest_digest, res.model_digest,
                          res.bytes_copied, [], store=models_dir)


@dataclass
class BuildInfo:
    """What the index records about the build a Modelfile belongs to."""

    build_dir: Path | None = None
    base: str | None = None
    method: str | None = None


def build_info_for(modelfile: Path) -> BuildInfo:
    """The build whose ``ollama/Modelfile`` this is (its base and training method), if any."""
    from ftpack.core.layout import BuildLayout
    from ftpack.core.manifest import Manifest

    modelfile = Path(modelfile).resolve()
    layout = BuildLayout(modelfile.parent.parent)
    if layout.modelfile != modelfile or not layout.manifest.is_file():
        return BuildInfo()
    try:
        manifest = Manifest.load(layout.root)
    except FtpackError:  # a damaged build.json: still this build's model, without details
        return BuildInfo(layout.root)
    train = manifest.stages.get("train")
    method = (train.metrics.get("method") if train else None) or manifest.config.get("method")
    return BuildInfo(layout.root, manifest.config.get("base"), method)


def registration_entry(result: RegisterResult, req: RegistrationRequest, build: BuildInfo) -> dict[str, Any]:
    """The index entry `ftpack list` uses to recognise this model as ftpack's."""
    from ftpack.ollama.store import read_gguf_summary

    summary = read_gguf_summary(req.model_path)
    return {"name": result.name, "where": result.where, "manifest_digest": result.manifest_digest,
            "model_digest": result.model_digest, "gguf": str(Path(req.model_path).resolve()),
            "build_dir": str(build.build_dir.resolve()) if build.build_dir else None, "base": build.base,
            "method": build.method, "quant": summary.file_type,
            "registered_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def register(name: str, modelfile: str | os.PathLike, *, mode: str = "server", host: str | None = None,
             models_dir: str | os.PathLike | None = None, force: bool | str = False, reporter=None,
             build: BuildInfo | None = None) -> RegisterResult:
    """Register the GGUF a Modelfile points at, with everything the Modelfile says.

    ``mode`` is "server" (OLLAMA_HOST / ``host``) or "offline" (``models_dir``). An existing
    model of that name is refused unless ``force`` is True, or ``force="own"`` and ftpack
    registered it (what a rebuild does). Records the result in ftpack's index so
    ``ftpack list`` can tell ftpack's models apart; ``build`` defaults to the build the
    Modelfile sits in.
    """
    from ftpack.core.report import get_reporter

    reporter = reporter or get_reporter()
    parse_model_name(name)
    if mode not in REGISTER_MODES:
        raise bad_input(f"Unknown registration mode {mode!r}: use server or offline.")
    modelfile = Path(modelfile)
    req = RegistrationRequest.from_modelfile(modelfile)
    build = build or build_info_for(modelfile)
    if mode == "offline":
        result = register_offline(name, req, models_dir=models_dir, force=force, reporter=reporter)
    else:
        result = register_with_server(name, req, host=host, force=force, reporter=reporter)
    record_registration(registration_entry(result, req, build))
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
    from ftpack.core.locations import ollama_models_dir
    from ftpack.ollama.api import OllamaServer
    from ftpack.ollama.store import store_models

    out: list[ListedModel] = []
    if offline:
        root = Path(models_dir).expanduser() if models_dir else ollama_models_dir()
        for m in store_models(root):
            out.append(ListedModel(m.name.display, m.size, m.config.get("file_type", ""), m.digest,
                                   m.modified.isoformat(timespec="seconds"), find_registration(m.name, m.digest)))
        return store_where(root), out
    with OllamaServer(host) as server:
        for m in server.list_models():
            try:
                parsed = parse_model_name(m.get("model") or m.get("name") or "")
            except FtpackError:
                continue
            details = m.get("details") or {}
            modified = m.get("modified_at")
            out.append(ListedModel(parsed.display, int(m.get("size") or 0), details.get("quantization_level") or "",
                                   m.get("digest") or "", modified.isoformat(timespec="seconds")
                                   if hasattr(modified, "isoformat") else str(modified or ""),
                                   find_registration(parsed, m.get("digest"))))
        return server_where(server.host), out


def remove(name: str, *, offline: bool = False, host: str | None = None,
           models_dir: str | os.PathLike | None = None, force: bool = False) -> str:
    """Delete a model (server or store), keeping blobs other models share; returns ``where``.

    Refuses a model ftpack did not create unless ``force`` (a typo should not delete
    someone's model).
    """
    from ftpack.core.locations import ollama_models_dir
    from ftpack.ollama.api import OllamaServer
    from ftpack.ollama.store import remove_model

    parsed = parse_model_name(name)
    where, models = list_models(offline=offline, host=host, models_dir=models_dir)
    match = next((m for m in models if names_match(m.name, parsed)), None)
    if match is None:
        raise FtpackError(f"Model {parsed.display} is not in Ollama ({place_of(where)}).",
                          "`ftpack list --all` shows what is there.", code=2)
    if match.ftpack is None and not force:
        raise FtpackError(f"Model {match.name} was not created by ftpack (or was changed since); not removing it.",
                          "Pass --force to remove it anyway, or use `ollama rm`.", code=2)
    if offline:
        remove_model(Path(models_dir).expanduser() if models_dir else ollama_models_dir(), match.name)
    else:
        with OllamaServer(host) as server:
            server.delete(match.name)
    forget_registration(where, match.name)
    return where


# -- the pipeline stage ----------------------------------------------------------------------------

def run_register_stage(ctx):
    """Stage `register`: create the model in Ollama from the build's Modelfile.

    Reads: ``ctx.upstream_path("modelfile")`` (FROM is relative to it), config
    ``register`` (server | offline), ``host``, ``models_dir``; the model name is the
    build's name. Replaces a model of that name only when ftpack registered it (a
    rebuild), however it was registered then; anyone else's model is refused. Writes
    ``register/registration.json``; metrics: mode, name, where, store (the store written
    offline), model_digest, manifest_digest, uploaded_bytes, run (the command to try).
    """
    from ftpack.core.atomic import write_json
    from ftpack.core.runner import StageResult

    cfg = ctx.config
    if cfg.register not in REGISTER_MODES:
        raise bad_input(f"register = {cfg.register!r}: the register stage needs server or offline.")
    train = ctx.manifest.stages.get("train")
    build = BuildInfo(ctx.build_dir, cfg.base, (train.metrics.get("method") if train else None) or cfg.method)
    result = register(cfg.name, ctx.upstream_path("modelfile"), mode=cfg.register, host=cfg.host,
                      models_dir=cfg.models_dir, force="own", reporter=ctx.reporter, build=build)
    run = f"ollama run {result.name.removesuffix(':latest')}"
    metrics = {"mode": cfg.register, "name": result.name, "where": result.where,
               "store": str(result.store) if result.store else None, "model_digest": result.model_digest,
               "manifest_digest": result.manifest_digest, "uploaded_bytes": result.uploaded_bytes, "run": run}
    out = write_json(ctx.layout.registration, metrics)
    ctx.reporter.info(f"registered {result.name} in {result.place}: try `{run}`")
    return StageResult(outputs=[out], main_output=out, metrics=metrics)
