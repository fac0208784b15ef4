"""The Ollama side of an adapter build (``--ship adapter``): its Modelfile and its registration.

The model is ``FROM <base model>`` + ``ADAPTER <name>.lora.gguf`` with the build's
TEMPLATE, stops and SYSTEM: in Ollama its layers are the base's own model blob (the
same digest, never copied or uploaded again), the adapter blob and the small text
layers. Registering it:

1. a base ftpack made (a converted Hugging Face base, a ``.gguf`` base) is registered
   first as ``--ollama-base`` (default ``NAME-base``), or reused when that model already
   holds exactly this GGUF; a base pulled into Ollama is checked to still be the blob
   training read;
2. the adapter model is created from it (server: HEAD/upload of the adapter blob, then
   ``/api/create`` with ``from`` + ``adapters``; offline: the store written as Ollama
   would);
3. a server that does not take adapters (Ollama 0.34.1 and later: server/create.go@0029bb5
   refuses them; a side-effect-free probe asks before the build starts, and again here) or
   fails creating the model is a clear error: a base registered in step 1 by this run is
   removed again, so nothing is left half-registered. ``--ship adapter`` is only built when
   asked: the default ships the merged model (ftpack.pipeline.resolve_ship).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ftpack.core.errors import FtpackError
from ftpack.gguf.ship import ShippedBase, base_of
from ftpack.ollama.names import parse_model_name
from ftpack.ollama.request import RegistrationRequest

def run_adapter_modelfile_stage(ctx):
    """Stage `modelfile` of an adapter build: ``FROM <base model>`` + ``ADAPTER ../gguf/<name>.lora.gguf``.

    Reads the ``base`` stage's record (the Ollama model holding the base), the ``adapter``
    stage's GGUF, the build's chat format as trained and the Modelfile settings (as the
    merged build's Modelfile stage). `ollama create NAME -f Modelfile` works with it as
    it is once the base model exists in Ollama.
    """
    from ftpack.core.runner import StageResult
    from ftpack.ollama.modelfile import build_spec_of, write_modelfile
    from ftpack.training.templates import template_of_build

    cfg = ctx.config
    base = base_of(ctx)
    adapter = ctx.upstream_path("adapter")
    out = ctx.layout.modelfile
    pulled = "" if base.in_ollama_already else f" (ftpack registers {base.model} first)"
    template = template_of_build(ctx.layout)
    spec = build_spec_of(cfg, ctx.layout, adapter, out, adapter=adapter, comment=(
        f"Modelfile for {cfg.name}, written by ftpack (chat format: {template.name}): the LoRA adapter on the "
        f"base model {base.model}{pulled}.\nCreate the model: ollama create {cfg.name} -f Modelfile"))
    spec = dataclasses.replace(spec, from_path=base.model)
    write_modelfile(out, spec)
    ctx.reporter.info(f"wrote {out} (FROM {base.model}, ADAPTER {spec.adapter}, template {template.name})")
    return StageResult(outputs=[out], main_output=out,
                       metrics={"template": template.name, "from": spec.from_path, "adapter": spec.adapter,
                                "stop": [v for n, v in spec.parameters if n == "stop"],
                                "parameters": spec.typed_parameters()})


# -- registration -------------------------------------------------------------------------------

def register_adapter_build(ctx, build) -> tuple[Any, dict[str, Any], list[Path]]:
    """(result, register-stage metrics, extra outputs) of an adapter build's registration; the
    merged model when the server will not take the adapter (see the module docstring)."""
    from ftpack.ollama.registration import AdaptersRejected, register_request

    cfg = ctx.config
    reporter = ctx.reporter
    base = base_of(ctx)
    req = RegistrationRequest.from_modelfile(ctx.upstream_path("modelfile"))
    if req.from_model is None or req.adapter_path is None:
        raise FtpackError(f"{ctx.upstream_path('modelfile')} is not an adapter Modelfile (FROM <model> + ADAPTER).",
                          "Run the build again with --force modelfile.")
    where = {"mode": cfg.register, "host": cfg.host, "models_dir": cfg.models_dir}
    created_base = False
    try:
        if cfg.register == "server":
            _require_adapters(cfg.host)
        base_state, created_base, base_sent = ensure_base(base, req, build=build, reporter=reporter, **where)
        build = dataclasses.replace(build, base_quant=base.file_type)
        result = register_request(cfg.name, req, force="own", reporter=reporter, build=build, **where)
    except AdaptersRejected as exc:
        if created_base:
            _unregister_base(base.model, reporter=reporter, **where)
        raise FtpackError(f"{exc.message.rstrip('.')}: nothing was registered.",
                          "Ship the merged model: `ftpack build ... --ship merged` (the default) reuses this "
                          "build's training. The adapter GGUF stays in gguf/ for `llama-server --lora`.",
                          code=2) from None
    metrics = {"shipped": "adapter", "base_model": base.model, "base_source": base.source, "base": base_state,
               "base_digest": base.digest, "base_bytes": base.bytes, "base_uploaded_bytes": base_sent,
               "adapter_digest": result.adapter_digest,
               "adapter_bytes": result.adapter_bytes, "model_digest": result.model_digest or base.digest}
    reporter.info(f"shipped as an adapter: {result.adapter_bytes:,} bytes on {base.model} ({base.bytes:,} bytes, "
                  f"{base_state})")
    return dataclasses.replace(result, model_digest=result.model_digest or base.digest), metrics, []


def _require_adapters(host: str | None) -> None:
    """Ask the server whether it takes adapters before anything is registered."""
    from ftpack.ollama.api import OllamaServer
    from ftpack.ollama.registration import AdaptersRejected

    with OllamaServer(host) as server:
        server.require_create_api()
        accepted, why = server.accepts_adapters()
    if not accepted:
        raise AdaptersRejected(f"{why}.")


def _base_request(base: ShippedBase, req: RegistrationRequest) -> RegistrationRequest:
    """The base model as its own Ollama model: its GGUF with the build's chat format (TEMPLATE,
    stops, num_ctx), so `ollama run NAME-base` chats like the adapters on it."""
    params = {k: v for k, v in req.parameters.items() if k in ("stop", "num_ctx")}
    return RegistrationRequest(model_path=base.gguf, template=req.template, parameters=params,
                               licenses=list(req.licenses))


def ensure_base(base: ShippedBase, req: RegistrationRequest, *, mode: str, host: str | None,
                models_dir: str | Path | None, build, reporter) -> tuple[str, bool, int]:
    """Make sure the Ollama model ``base.model`` holds ``base.gguf``: (what was found, created now,
    bytes uploaded or copied for it).

    A pulled base must still be the blob training read; a base ftpack made is registered
    when missing and reused when that model already holds exactly this GGUF; any other
    model of that name is refused (it is someone else's, or another base).
    """
    from ftpack.ollama.registration import register_request

    found = _base_digest(base.model, mode=mode, host=host, models_dir=models_dir)
    if base.in_ollama_already:
        if found is None:
            raise FtpackError(f"The base model {base.model} is not in Ollama ({_place(mode, host, models_dir)}).",
                              f"Pull it there (`ollama pull {base.model}`), or register where it is.", code=2)
        if found is not True and found != base.digest:
            raise FtpackError(f"The Ollama model {base.model} no longer holds the weights this adapter was trained "
                              f"on (its model blob is {found[:19]}…, training read {base.digest[:19]}…).",
                              "Train again on the current model (`ftpack build … --force train`).", code=2)
        return "pulled into Ollama", False, 0
    if found is not None:
        if found is True or found == base.digest:
            reporter.info(f"base {base.model} already holds this GGUF: reused, nothing uploaded")
            return "already registered", False, 0
        raise FtpackError(f"Ollama already has a model {base.model} with other weights (model blob {found[:19]}…); "
                          "it cannot serve as this adapter's base.",
                          "Name the base for this build with --ollama-base NAME (a new name), or remove that model "
                          "if it is an old base nothing uses.", code=2)
    reporter.info(f"registering the base {base.model} ({base.bytes:,} bytes) for adapter models to build on")
    base_build = dataclasses.replace(build, role="base", method=None)
    result = register_request(base.model, _base_request(base, req), mode=mode, host=host, models_dir=models_dir,
                              force=False, reporter=reporter, build=base_build)
    return "registered by this build", True, result.uploaded_bytes


def _base_digest(name: str, *, mode: str, host: str | None, models_dir: str | Path | None) -> str | bool | None:
    """The model blob digest ``name`` holds; True when it exists and ftpack's index vouches for
    its GGUF but the server does not say its blob; None when there is no such model."""
    from ftpack.core.locations import ollama_models_dir
    from ftpack.ollama.index import find_registration

    parsed = parse_model_name(name)
    if mode == "offline":
        from ftpack.ollama.store import MEDIA_MODEL, find_store_model

        store = Path(models_dir).expanduser() if models_dir else ollama_models_dir()
        model = find_store_model(store, parsed) if store.exists() else None
        if model is None:
            return None
        layer = model.layer(MEDIA_MODEL)
        return layer["digest"] if layer else "sha256:" + "0" * 64
    from ftpack.ollama.api import OllamaServer

    with OllamaServer(host) as server:
        listed = server.find_model(parsed)
        if listed is None:
            return None
        entry = find_registration(parsed, listed.get("digest"))
        if entry is not None and entry.get("model_digest"):
            return entry["model_digest"]  # what ftpack uploaded (Ollama >= 0.30 stores a re-encoded copy)
        return _blob_of_show(server, parsed.display) or True


def _blob_of_show(server, name: str) -> str | None:
    """The model blob digest in ``/api/show``'s Modelfile (``FROM …/blobs/sha256-<hex>``), if it says."""
    import re

    try:
        shown = server.client.show(name)
    except Exception:  # an older server or an odd answer: the caller falls back to trusting the name
        return None
    m = re.search(r"^FROM\s+\S*sha256[-:]([0-9a-f]{64})\s*$", str(getattr(shown, "modelfile", "") or ""), re.M)
    return "sha256:" + m.group(1) if m else None


def _place(mode: str, host: str | None, models_dir: str | Path | None) -> str:
    from ftpack.core.locations import ollama_models_dir
    from ftpack.ollama.api import resolve_host

    if mode == "offline":
        return f"the store at {Path(models_dir).expanduser() if models_dir else ollama_models_dir()}"
    return f"the server at {resolve_host(host)}"


def _unregister_base(name: str, *, mode: str, host: str | None, models_dir: str | Path | None, reporter) -> None:
    """Remove a base this run registered when its adapter model could not be created."""
    from ftpack.ollama.registration import remove

    try:
        remove(name, offline=mode == "offline", host=host, models_dir=models_dir)
        reporter.info(f"removed the base {name} registered for the adapter again")
    except FtpackError as exc:  # e.g. another model uses it by now: then it stays, complete on its own
        reporter.warn(f"Kept the base {name}: {exc.message}")
