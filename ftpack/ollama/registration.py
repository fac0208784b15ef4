"""Registering a build's model in Ollama, and listing or removing the models ftpack made.

Two ways to register the same content (a :class:`RegistrationRequest` read from the
Modelfile): through a running server (:class:`ftpack.ollama.api.OllamaServer`: upload
the blobs it lacks, then ``/api/create``), or offline, writing Ollama's store directly
(:func:`ftpack.ollama.store.write_model`). Each registration is recorded in ftpack's
index (:mod:`ftpack.ollama.index`), so ``ftpack list`` and ``ftpack remove`` can tell
ftpack's models from everyone else's, and a rebuild replaces only its own model.

A request may name its base model instead of bringing a GGUF (``FROM <model>`` +
``ADAPTER``: what an adapter build ships, :mod:`ftpack.ollama.shipping`): the base's model
blob is then reused by digest and only the adapter travels. A server that does not take
adapters raises :class:`AdaptersRejected` before anything is created. ``ftpack list``
says how each model was shipped; ``ftpack remove`` never removes a base that another
model's adapter is built on.
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


class AdaptersRejected(FtpackError):
    """The server does not take a LoRA adapter (or failed creating the model with one); nothing was created."""


@dataclass
class RegisterResult:
    name: str  # display name (what `ollama run` takes)
    where: str  # "server:<url>" or "store:<path>" (ftpack.ollama.index)
    manifest_digest: str | None
    model_digest: str | None  # the model layer's GGUF (a base's own when built FROM it; unknown then on a server)
    uploaded_bytes: int  # bytes sent to the server, or copied into the store
    statuses: list[str]  # the server's status lines (none offline)
    store: Path | None = None  # the store written (offline)
    shipped: str = "gguf"  # "adapter" (a LoRA GGUF on a base model's blob) or "gguf" (its own GGUF)
    base_model: str | None = None  # the model it was created FROM (adapter builds)
    adapter_digest: str | None = None
    adapter_bytes: int = 0

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
        if req.adapter_path is not None:
            accepted, why = server.accepts_adapters()
            if not accepted:
                raise AdaptersRejected(f"{why}.", "Ship the merged model instead (--ship merged).")
        if req.from_model is not None and server.find_model(parse_model_name(req.from_model)) is None:
            raise FtpackError(f"The base model {req.from_model} is not on the Ollama server at {server.host}.",
                              f"Pull or create it there first (`ollama pull {req.from_model}`).", code=2)
        uploaded = 0
        digests: dict[str, str] = {}
        for path in req.files:
            path = Path(path)
            digest = "sha256:" + sha256_file(path)
            digests[str(path)] = digest
            if server.has_blob(digest):
                reporter.info(f"{path.name}: the server already has blob {digest[:19]}…, not uploading")
            else:
                uploaded += server.upload_blob(path, digest, reporter)
        files = {req.model_path.name: digests[str(req.model_path)]} if req.model_path is not None else None
        adapter = Path(req.adapter_path) if req.adapter_path is not None else None
        adapters = {adapter.name: digests[str(adapter)]} if adapter is not None else None
        failure = AdaptersRejected if adapter is not None else FtpackError  # with an adapter: ship merged instead
        statuses = []
        try:
            for status in server.create(parsed.display, files, adapters, req):
                statuses.append(status)
                reporter.info(f"ollama: {status}")
                reporter.event("ollama_status", status=status)
        except FtpackError as exc:
            if adapter is None:
                raise
            raise AdaptersRejected(f"Ollama could not create {parsed.display} with the adapter: {exc.message}",
                                   exc.hint) from None
        if not statuses or statuses[-1] != "success":
            raise failure(f"Ollama did not confirm the creation of {parsed.display} "
                          f"(last status: {statuses[-1] if statuses else 'none'}).",
                          "Check the server's log and run the same command again.")
        created = server.find_model(parsed)
        return RegisterResult(parsed.display, server_where(server.host), created.get("digest") if created else None,
                              digests.get(str(req.model_path)), uploaded, statuses,
                              shipped="adapter" if adapter is not None else "gguf", base_model=req.from_model,
                              adapter_digest=digests.get(str(adapter)),
                              adapter_bytes=adapter.stat().st_size if adapter is not None else 0)


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
    adapter = Path(req.adapter_path) if req.adapter_path is not None else None
    return RegisterResult(res.name.display, store_where(models_dir), res.manifest_digest, res.model_digest,
                          res.bytes_copied, [], store=models_dir,
                          shipped="adapter" if adapter is not None else "gguf", base_model=req.from_model,
                          adapter_digest=res.adapter_digest, adapter_bytes=adapter.stat().st_size if adapter else 0)


@dataclass
class BuildInfo:
    """What the index records about the build a Modelfile belongs to."""

    build_dir: Path | None = None
    base: str | None = None
    method: str | None = None
    role: str = "model"  # "base": a base ftpack registered for adapter models to build on
    base_quant: str | None = None  # the base GGUF's type, for a model created FROM a base


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

    quant = read_gguf_summary(req.model_path).file_type if req.model_path is not None else build.base_quant
    return {"name": result.name, "where": result.where, "manifest_digest": result.manifest_digest,
            "model_digest": result.model_digest,
            "gguf": str(Path(req.model_path).resolve()) if req.model_path is not None else None,
            "build_dir": str(build.build_dir.resolve()) if build.build_dir else None, "base": build.base,
            "method": build.method, "quant": quant, "role": build.role, "shipped": result.shipped,
            "from_model": result.base_model, "adapter_digest": result.adapter_digest,
            "adapter_bytes": result.adapter_bytes or None,
            "adapter": str(Path(req.adapter_path).resolve()) if req.adapter_path is not None else None,
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
    modelfile = Path(modelfile)
    req = RegistrationRequest.from_modelfile(modelfile)
    return register_request(name, req, mode=mode, host=host, models_dir=models_dir, force=force, reporter=reporter,
                            build=build or build_info_for(modelfile))


def register_request(name: str, req: RegistrationRequest, *, mode: str = "server", host: str | None = None,
                     models_dir: str | os.PathLike | None = None, force: bool | str = False, reporter=None,
                     build: BuildInfo | None = None) -> RegisterResult:
    """:func:`register` for a request already read (or made: a base, a fallback)."""
    from ftpack.core.report import get_reporter

    reporter = reporter or get_reporter()
    parse_model_name(name)
    if mode not in REGISTER_MODES:
        raise bad_input(f"Unknown registration mode {mode!r}: use server or offline.")
    build = build or BuildInfo()
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
    size: int  # every layer, the base's blob included (what Ollama reports)
    quant: str
    digest: str
    modified: str
    ftpack: dict[str, Any] | None  # the index entry when ftpack made it
    shipped: str = ""  # "adapter" (on base_model's blob), "gguf" (its own weights), "" when unknown
    base_model: str | None = None
    own_size: int | None = None  # bytes only this model adds (its adapter) when it is built on a base


def list_models(*, offline: bool = False, host: str | None = None,
                models_dir: str | os.PathLike | None = None) -> tuple[str, list[ListedModel]]:
    """(where, models) from the server or the store, each marked with ftpack's index entry and
    how it was shipped (the store's layers say so; a server's list does not, ftpack's index does)."""
    from ftpack.core.locations import ollama_models_dir
    from ftpack.ollama.api import OllamaServer
    from ftpack.ollama.store import MEDIA_ADAPTER, MEDIA_MODEL, store_models

    out: list[ListedModel] = []
    if offline:
        root = Path(models_dir).expanduser() if models_dir else ollama_models_dir()
        for m in store_models(root):
            adapter, model = m.layer(MEDIA_ADAPTER), m.layer(MEDIA_MODEL)
            shipped = "adapter" if adapter is not None else "gguf" if model is not None else ""
            out.append(ListedModel(m.name.display, m.size, m.config.get("file_type", ""), m.digest,
                                   m.modified.isoformat(timespec="seconds"), find_registration(m.name, m.digest),
                                   shipped, (model or {}).get("from") if adapter is not None else None,
                                   int(adapter["size"]) if adapter is not None else None))
        return store_where(root), out
    with OllamaServer(host) as server:
        for m in server.list_models():
            try:
                parsed = parse_model_name(m.get("model") or m.get("name") or "")
            except FtpackError:
                continue
            details = m.get("details") or {}
            modified = m.get("modified_at")
            entry = find_registration(parsed, m.get("digest"))
            shipped = (entry or {}).get("shipped") or ""
            out.append(ListedModel(parsed.display, int(m.get("size") or 0), details.get("quantization_level") or "",
                                   m.get("digest") or "", modified.isoformat(timespec="seconds")
                                   if hasattr(modified, "isoformat") else str(modified or ""), entry,
                                   shipped, (entry or {}).get("from_model"),
                                   (entry or {}).get("adapter_bytes")))
        return server_where(server.host), out


def models_using(name: str, where: str, models: list[ListedModel], *,
                 models_dir: str | os.PathLike | None = None) -> list[str]:
    """The other models whose adapter is built on ``name``'s weights: in a store, those whose
    model layer is ``name``'s blob and that carry an adapter; on a server, those ftpack
    created FROM ``name`` (its index says so) that are still there."""
    from ftpack.ollama.store import find_store_model, models_built_on

    parsed = parse_model_name(name)
    if models_dir is not None:
        own = find_store_model(models_dir, parsed)
        return [m.name.display for m in models_built_on(models_dir, own)] if own is not None else []
    return [m.name for m in models if not names_match(m.name, parsed) and m.base_model
            and names_match(m.base_model, parsed)]


def remove(name: str, *, offline: bool = False, host: str | None = None,
           models_dir: str | os.PathLike | None = None, force: bool = False) -> str:
    """Delete a model (server or store), keeping blobs other models share; returns ``where``.

    Refuses a model ftpack did not create unless ``force`` (a typo should not delete
    someone's model), and always refuses a base that another model's adapter is built on:
    that model needs it (remove those first).
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
    store = (Path(models_dir).expanduser() if models_dir else ollama_models_dir()) if offline else None
    users = models_using(match.name, where, models, models_dir=store)
    if users:
        raise FtpackError(f"Model {match.name} is the base of {len(users)} other model(s) whose adapter is built on "
                          f"its weights ({', '.join(users)}); not removing it.",
                          "Remove those models first (`ftpack remove NAME`), then the base.", code=2)
    if match.ftpack is None and not force:
        raise FtpackError(f"Model {match.name} was not created by ftpack (or was changed since); not removing it.",
                          "Pass --force to remove it anyway, or use `ollama rm`.", code=2)
    if offline:
        remove_model(store, match.name)
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
    rebuild), however it was registered then; anyone else's model is refused. An adapter
    build (``--ship adapter``) goes through :func:`ftpack.ollama.shipping.register_adapter_build`
    (its base first when ftpack converted it; the merged model when the server refuses
    adapters). Writes ``register/registration.json``; metrics: mode, name, where, store
    (the store written offline), model_digest, manifest_digest, uploaded_bytes, run (the
    command to try), shipped (adapter | merged) and, for adapter builds, what it built on.
    """
    from ftpack.core.atomic import write_json
    from ftpack.core.runner import StageResult
    from ftpack.gguf.ship import ships_adapter

    cfg = ctx.config
    if cfg.register not in REGISTER_MODES:
        raise bad_input(f"register = {cfg.register!r}: the register stage needs server or offline.")
    train = ctx.manifest.stages.get("train")
    build = BuildInfo(ctx.build_dir, cfg.base, (train.metrics.get("method") if train else None) or cfg.method)
    outputs: list[Path] = []
    extra: dict[str, Any] = {"shipped": "merged"}
    if ships_adapter(cfg):
        from ftpack.ollama.shipping import register_adapter_build

        result, extra, outputs = register_adapter_build(ctx, build)
    else:
        result = register(cfg.name, ctx.upstream_path("modelfile"), mode=cfg.register, host=cfg.host,
                          models_dir=cfg.models_dir, force="own", reporter=ctx.reporter, build=build)
    run = f"ollama run {result.name.removesuffix(':latest')}"
    metrics = {"mode": cfg.register, "name": result.name, "where": result.where,
               "store": str(result.store) if result.store else None, "model_digest": result.model_digest,
               "manifest_digest": result.manifest_digest, "uploaded_bytes": result.uploaded_bytes, "run": run,
               **extra}
    out = write_json(ctx.layout.registration, metrics)
    ctx.reporter.info(f"registered {result.name} in {result.place}: try `{run}`")
    return StageResult(outputs=[out, *outputs], main_output=out, metrics=metrics)
