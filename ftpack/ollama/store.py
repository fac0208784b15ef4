"""Ollama's model store written directly, byte-compatible with what ``ollama create`` writes.

For machines where no Ollama server runs (CI, a build box): ``ftpack register --offline``
puts the GGUF and every other layer into Ollama's store (``OLLAMA_MODELS``, else
``~/.ollama/models``, else a Linux service install's ``/usr/share/ollama/.ollama/models``:
:func:`ftpack.core.locations.ollama_models_dir`) exactly as Ollama's ``server/create.go`` would — same media types,
digests, sizes, config blob fields and Go-encoded JSON bytes — and a server started
later (or already running: it re-reads manifests when listing) sees the model.

Layout (``manifest/``): ``blobs/sha256-<hex>`` holds every layer by content;
``manifests/<host>/<namespace>/<model>/<tag>`` is the manifest JSON. Layers, in
Ollama's order: model GGUF, adapter GGUF, template, system, license(s), params (JSON),
messages (JSON); the config blob (``application/vnd.docker.container.image.v1+json``)
says ``model_format`` "gguf", ``model_family`` (the GGUF architecture),
``model_families``, ``model_type`` (parameter count, Ollama's ``HumanNumber``),
``file_type``, ``architecture`` "amd64", ``os`` "linux" (Ollama hard-codes both).

One deliberate difference: since v0.30 Ollama re-encodes an uploaded GGUF with its own
``llama-quantize`` before storing it (a validation "COPY" pass whose bytes depend on the
llama.cpp bundled with that Ollama). ftpack stores the GGUF as is — it already comes from
llama.cpp's quantizer — so the model layer's digest is the GGUF's sha256, as with
Ollama 0.5.5–0.29 and with models pulled from a registry.

Every file is written under a temporary name and renamed (blobs first, the manifest
last), so a killed run never leaves a manifest pointing at a missing blob.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftpack.core.atomic import atomic_path, check_free_space, human_bytes
from ftpack.core.errors import FtpackError
from ftpack.gguf.inspect import file_type_names
from ftpack.ollama.gojson import as_go_decoded, go_json
from ftpack.ollama.names import PART_KINDS, ModelName, parse_model_name, valid_part
from ftpack.ollama.request import RegistrationRequest

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_ADAPTER = "application/vnd.ollama.image.adapter"
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_SYSTEM = "application/vnd.ollama.image.system"
MEDIA_PARAMS = "application/vnd.ollama.image.params"
MEDIA_MESSAGES = "application/vnd.ollama.image.messages"
MEDIA_LICENSE = "application/vnd.ollama.image.license"

DIGEST_RE = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")


@dataclass
class GGUFSummary:
    """What Ollama's create reads from a GGUF header for the config blob."""

    architecture: str
    kind: str
    file_type: str
    parameter_count: int


def read_gguf_summary(path: str | os.PathLike) -> GGUFSummary:
    """general.architecture / general.type / general.file_type (uint32 only, as Ollama) and
    the parameter count (sum of tensor elements, which Ollama recomputes on load), from the
    header alone (:mod:`ftpack.gguf.header`: milliseconds, where gguf-py's reader takes seconds)."""
    from ftpack.gguf.header import read_gguf_header

    header = read_gguf_header(path)
    ft = header.get("general.file_type", "UINT32")
    return GGUFSummary(
        architecture=header.get("general.architecture", "STRING") or "unknown",
        kind=header.get("general.type", "STRING") or "unknown",
        file_type=file_type_names().get(ft, "unknown") if ft else "unknown",  # 0: Ollama's unknown
        parameter_count=header.parameter_count,
    )


def human_number(n: int) -> str:
    """Ollama's format.HumanNumber (the config's model_type, e.g. "135M")."""
    if n >= 1_000_000_000:
        v = n / 1_000_000_000
        return f"{v:.0f}B" if v == int(v) else f"{v:.1f}B"
    if n >= 1_000_000:
        v = n / 1_000_000
        return f"{v:.0f}M" if v == int(v) else f"{v:.2f}M"
    if n >= 1000:
        return f"{n / 1000:.0f}K"
    return str(n)


# -- the store ------------------------------------------------------------------------------

def blob_path(models_dir: Path, digest: str) -> Path:
    if not DIGEST_RE.match(digest):
        raise FtpackError(f"Invalid blob digest {digest!r}.")
    return Path(models_dir) / "blobs" / digest.replace(":", "-")


def manifest_path(models_dir: Path, name: ModelName) -> Path:
    return Path(models_dir) / "manifests" / name.host / name.namespace / name.model / name.tag


@dataclass
class StoreModel:
    """One manifest in the store."""

    name: ModelName
    path: Path
    digest: str  # sha256 of the manifest file (what /api/tags calls digest)
    size: int
    modified: _dt.datetime
    manifest: dict[str, Any]
    config: dict[str, Any]

    def layer(self, media_type: str) -> dict[str, Any] | None:
        return next((x for x in self.manifest.get("layers", []) if x.get("mediaType") == media_type), None)


def store_models(models_dir: str | os.PathLike) -> list[StoreModel]:
    """Every readable manifest under ``models_dir`` (as Ollama's Manifests(true): bad ones skipped)."""
    root = Path(models_dir) / "manifests"
    out = []
    for p in sorted(root.glob("*/*/*/*")):
        if not p.is_file():
            continue
        parts = p.relative_to(root).parts
        if not all(valid_part(k, x) for k, x in zip(PART_KINDS, parts)):
            continue
        try:
            raw = p.read_bytes()
            manifest = json.loads(raw)
            cfg_digest = manifest.get("config", {}).get("digest", "")
            config = json.loads(blob_path(Path(models_dir), cfg_digest).read_bytes()) if cfg_digest else {}
        except (OSError, ValueError, FtpackError):
            continue
        size = sum(int(x.get("size", 0)) for x in manifest.get("layers", [])) + int(manifest["config"].get("size", 0))
        out.append(StoreModel(ModelName(*parts), p, hashlib.sha256(raw).hexdigest(), size,
                              _dt.datetime.fromtimestamp(p.stat().st_mtime, _dt.timezone.utc), manifest, config))
    return out


def find_store_model(models_dir: str | os.PathLike, name: ModelName) -> StoreModel | None:
    return next((m for m in store_models(models_dir) if m.name.same_as(name)), None)


def _digests_in_use(models_dir: Path, skip: Path | None = None) -> set[str]:
    used: set[str] = set()
    for m in store_models(models_dir):
        if skip is not None and m.path == skip:
            continue
        for layer in m.manifest.get("layers", []) + [m.manifest.get("config", {})]:
            if layer.get("digest"):
                used.add(layer["digest"])
    return used


def _remove_unused_layers(models_dir: Path, manifest: dict[str, Any]) -> list[str]:
    """Ollama's Manifest.RemoveLayers: delete this manifest's blobs no other manifest uses."""
    used = _digests_in_use(models_dir)
    removed = []
    for layer in manifest.get("layers", []) + [manifest.get("config", {})]:
        d = layer.get("digest")
        if d and d not in used:
            blob_path(models_dir, d).unlink(missing_ok=True)
            removed.append(d)
    return removed


def _prune_empty_dirs(folder: Path) -> None:
    for d in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


def _write_blob_bytes(models_dir: Path, data: bytes, media_type: str) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = blob_path(models_dir, digest)
    if not path.exists():
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
            os.chmod(tmp, 0o644)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def _copy_blob(models_dir: Path, src: Path, reporter, what: str) -> tuple[str, int, bool]:
    """Copy ``src`` into the store under its sha256 (one read pass); (digest, size, copied)."""
    from ftpack.core.atomic import sha256_file

    size = src.stat().st_size
    digest = "sha256:" + sha256_file(src)
    dst = blob_path(models_dir, digest)
    if dst.exists() and dst.stat().st_size == size:
        reporter.info(f"{what}: blob {digest[:19]}… already in the store")
        return digest, size, False
    check_free_space(models_dir, size, f"the {what} blob")
    h = hashlib.sha256()
    with reporter.progress(f"copying {src.name}", total=size, unit="bytes") as bar, atomic_path(dst) as tmp:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(1 << 22):
                h.update(chunk)
                fout.write(chunk)
                bar.advance(len(chunk))
        os.chmod(tmp, 0o644)
        if "sha256:" + h.hexdigest() != digest:
            raise FtpackError(f"{src} changed while it was being copied (digest mismatch).",
                              "Make sure nothing is writing the GGUF, then run the command again.")
    return digest, size, True


def build_layers_offline(models_dir: Path, req: RegistrationRequest, reporter) -> tuple[dict, list[dict], int]:
    """Write every blob of ``req`` into the store; return (config layer, layers, bytes copied).

    With ``req.from_model`` the new model starts from that model's layers (Ollama's
    ``parseFromModel``: the same digests, each marked ``from`` the base's name, nothing
    copied); ``req``'s template, system, parameters and messages then replace the base's
    and its licenses are added, exactly as ``server/create.go`` does.
    """
    copied = 0
    layers: list[dict[str, Any]] = []
    config: dict[str, Any] = {"model_format": "", "model_family": "", "model_families": None, "model_type": "",
                              "file_type": "", "architecture": "amd64", "os": "linux"}
    if req.from_model is not None:
        base = base_model_layers(models_dir, req.from_model)
        layers += base.layers
        _describe_model(config, read_gguf_summary(blob_path(models_dir, base.model_digest)))
    for path, key in ((req.model_path, "model"), (req.adapter_path, "adapter")):
        if path is None:
            continue
        summary = read_gguf_summary(path)
        digest, size, did_copy = _copy_blob(models_dir, Path(path), reporter, key)
        copied += size if did_copy else 0
        media = MEDIA_ADAPTER if summary.kind == "adapter" else MEDIA_MODEL
        layer: dict[str, Any] = {"mediaType": media, "digest": digest, "size": size}
        if media != MEDIA_MODEL:
            layer["from"] = Path(path).name  # Ollama keeps the file name on layers it does not re-encode
        layers.append(layer)
        if media == MEDIA_MODEL:
            _describe_model(config, summary)
    if req.template:
        layers = _replace(layers, MEDIA_TEMPLATE, _write_blob_bytes(models_dir, req.template.encode("utf-8"),
                                                                    MEDIA_TEMPLATE))
    if req.system:
        layers = _replace(layers, MEDIA_SYSTEM, _write_blob_bytes(models_dir, req.system.encode("utf-8"), MEDIA_SYSTEM))
    for text in req.licenses:
        layers.append(_write_blob_bytes(models_dir, text.encode("utf-8"), MEDIA_LICENSE))
    params = dict(req.parameters)
    for layer in layers:  # Ollama's setParameters: the base's values stay unless the request sets them
        if layer["mediaType"] == MEDIA_PARAMS:
            for k, v in json.loads(blob_path(models_dir, layer["digest"]).read_bytes()).items():
                params.setdefault(k, v)
    if params:
        text = go_json(as_go_decoded(params), sort_keys=True) + "\n"
        layers = _replace(layers, MEDIA_PARAMS, _write_blob_bytes(models_dir, text.encode("utf-8"), MEDIA_PARAMS))
    if req.messages:
        msgs = [{"role": m["role"].lower(), "content": m["content"]} for m in req.messages]
        layers = _replace(layers, MEDIA_MESSAGES,
                          _write_blob_bytes(models_dir, (go_json(msgs) + "\n").encode("utf-8"), MEDIA_MESSAGES))
    cfg_layer = _write_blob_bytes(models_dir, (go_json(config) + "\n").encode("utf-8"), CONFIG_MEDIA_TYPE)
    return cfg_layer, layers, copied


def _describe_model(config: dict[str, Any], summary: GGUFSummary) -> None:
    """What Ollama's createModel puts in the config blob for a model layer (first one wins)."""
    config["model_format"] = config["model_format"] or "gguf"
    config["model_family"] = config["model_family"] or summary.architecture
    config["model_type"] = config["model_type"] or human_number(summary.parameter_count)
    config["file_type"] = config["file_type"] or summary.file_type
    config["model_families"] = (config["model_families"] or []) + [summary.architecture]


def _replace(layers: list[dict[str, Any]], media_type: str, layer: dict[str, Any]) -> list[dict[str, Any]]:
    """Ollama's removeLayer + append: layers of that media type go, the new one comes last."""
    return [x for x in layers if x["mediaType"] != media_type] + [layer]


@dataclass
class BaseLayers:
    """The layers a model created ``FROM`` an existing one starts with (Ollama's parseFromModel)."""

    name: ModelName
    layers: list[dict[str, Any]]
    model_digest: str
    model_size: int


def base_model_layers(models_dir: Path, name: str) -> BaseLayers:
    """The layers of model ``name`` in the store, each marked ``from`` its name, as Ollama copies
    them into a model created from it; an error when it is not there or holds no GGUF."""
    parsed = parse_model_name(name)
    base = find_store_model(models_dir, parsed) if Path(models_dir).exists() else None
    if base is None:
        raise FtpackError(f"The base model {parsed.display} is not in the Ollama store at {models_dir}.",
                          "An adapter model builds on its base: register the base there first (a build with "
                          "--ship adapter does), or point --models-dir at the store that has it.", code=2)
    model = base.layer(MEDIA_MODEL)
    if model is None:
        raise FtpackError(f"{base.name.display} in {models_dir} has no GGUF model layer to build on.", code=2)
    layers = []
    for src in base.manifest.get("layers", []):
        layer = {"mediaType": src["mediaType"], "digest": src["digest"], "size": int(src["size"]),
                 "from": base.name.display}
        if src.get("name"):
            layer["name"] = src["name"]
        layers.append(layer)
    return BaseLayers(base.name, layers, model["digest"], int(model["size"]))


def models_built_on(models_dir: str | os.PathLike, model: StoreModel) -> list[StoreModel]:
    """The other models in the store that carry an adapter on ``model``'s own model blob."""
    own = model.layer(MEDIA_MODEL)
    if own is None:
        return []
    return [m for m in store_models(models_dir) if m.path != model.path and m.layer(MEDIA_ADAPTER) is not None
            and (m.layer(MEDIA_MODEL) or {}).get("digest") == own["digest"]]


@dataclass
class StoreResult:
    name: ModelName
    manifest_path: Path
    manifest_digest: str
    model_digest: str
    bytes_copied: int
    replaced: bool
    adapter_digest: str | None = None


def write_model(models_dir: str | os.PathLike, name: str, req: RegistrationRequest, *, force: bool = False,
                reporter=None) -> StoreResult:
    """Create ``name`` in the store at ``models_dir`` from ``req``, as ``ollama create`` would.

    Refuses an existing model of that name (Ollama compares names case-insensitively)
    unless ``force``; then writes it over and deletes the old layers no model uses.
    """
    from ftpack.core.report import get_reporter

    reporter = reporter or get_reporter()
    models_dir = Path(models_dir).expanduser()
    parsed = parse_model_name(name)
    existing = find_store_model(models_dir, parsed) if models_dir.exists() else None
    if existing is not None and not force:
        raise FtpackError(f"Model {existing.name.display} already exists in {models_dir}.",
                          "Pass --force to replace it, or choose another name.", code=2)
    if existing is not None:
        parsed = existing.name  # keep the stored spelling, like Ollama's getExistingName
    (models_dir / "blobs").mkdir(parents=True, exist_ok=True)
    cfg_layer, layers, copied = build_layers_offline(models_dir, req, reporter)
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE, "config": cfg_layer, "layers": layers}
    data = (go_json(manifest) + "\n").encode("utf-8")
    path = manifest_path(models_dir, parsed)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        os.chmod(tmp, 0o644)
    if existing is not None:
        _remove_unused_layers(models_dir, existing.manifest)
    reporter.info(f"wrote manifest {path} ({len(layers)} layers, {human_bytes(copied)} copied)")
    model = next(x for x in layers if x["mediaType"] == MEDIA_MODEL)
    adapter = next((x for x in layers if x["mediaType"] == MEDIA_ADAPTER), None)
    return StoreResult(parsed, path, hashlib.sha256(data).hexdigest(), model["digest"], copied,
                       existing is not None, adapter["digest"] if adapter else None)


def remove_model(models_dir: str | os.PathLike, name: str) -> list[str]:
    """Delete a model from the store; blobs other manifests use stay. Returns removed digests."""
    models_dir = Path(models_dir).expanduser()
    parsed = parse_model_name(name)
    existing = find_store_model(models_dir, parsed)
    if existing is None:
        raise FtpackError(f"Model {parsed.display} is not in the Ollama store at {models_dir}.",
                          "See `ftpack list --offline --all` for the models there.", code=2)
    existing.path.unlink()
    _prune_empty_dirs(models_dir / "manifests")
    return _remove_unused_layers(models_dir, existing.manifest)
