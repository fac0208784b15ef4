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
is today's ``model.ConfigV2`` (types/model/config.go@0abf7fa): ``model_format`` "gguf",
``model_family`` (the GGUF architecture), ``model_families``, ``model_type`` (parameter
count, Ollama's ``HumanNumber``), ``file_type``, then, when set, ``renderer``, ``parser``,
``requires`` and ``capabilities``; no ``architecture``/``os`` any more. As ``ollama create``
does (server/create.go@0029bb5), a gemma4, laguna or nemotron_h GGUF gets its built-in
renderer and parser when the request names none, and a model created ``FROM`` another
inherits that model's whole config (the request's renderer/parser/requires win).

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
from ftpack.ollama.names import DEFAULT_HOST, PART_KINDS, ModelName, parse_model_name, valid_part
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
    v2: bool = False  # a manifests-v2 tag: the manifest is itself the blob sha256-<digest>

    def layer(self, media_type: str) -> dict[str, Any] | None:
        return next((x for x in self.manifest.get("layers", []) if x.get("mediaType") == media_type), None)


# -- manifests-v2 (ollama/ollama PR #15735, branch pdevine/addressable-manifest: manifest/paths.go and
#    manifest/manifest.go@7bcdb25; manifest lists: manifest/manifest.go@81b9cb7). Not in a release yet:
#    the manifest JSON is stored as a blob and manifests-v2/<host>/<ns>/<model>/<tag> is a relative
#    symlink to it (else a hard link, else a copy); registry.ollama.ai is spelled ollama.com there;
#    a v2 tag shadows a legacy manifest of the same name. ftpack reads both trees and never deletes
#    a blob that a manifest of either tree (or a manifest list's child) still references. ---------

V2_DIR = "manifests-v2"
V2_HOST = "ollama.com"
MANIFEST_LIST_MEDIA_TYPE = "application/vnd.ollama.manifest.list.v2+json"
_BLOB_NAME_RE = re.compile(r"^sha256-[0-9a-fA-F]{64}$")


def _v2_tag_bytes(models_dir: Path, tag: Path) -> bytes | None:
    """A v2 tag's manifest bytes (a link is followed and must be an intact blob); None when not."""
    if tag.is_symlink():
        target = tag.resolve()
        if not _BLOB_NAME_RE.match(target.name) or target.parent != (Path(models_dir) / "blobs").resolve():
            return None
        data = target.read_bytes()
        if hashlib.sha256(data).hexdigest() != target.name.split("-", 1)[1].lower():
            return None
        return data
    return tag.read_bytes() if tag.is_file() else None


def _read_tree(models_dir: Path, tree: str) -> list[StoreModel]:
    root = Path(models_dir) / tree
    out = []
    for p in sorted(root.glob("*/*/*/*")):
        if not (p.is_file() or p.is_symlink()):
            continue
        parts = list(p.relative_to(root).parts)
        if tree == V2_DIR and parts[0].lower() == V2_HOST:
            parts[0] = DEFAULT_HOST
        if not all(valid_part(k, x) for k, x in zip(PART_KINDS, parts)):
            continue
        try:
            raw = _v2_tag_bytes(models_dir, p) if tree == V2_DIR else p.read_bytes()
            if raw is None:
                continue
            manifest = json.loads(raw)
            cfg_digest = manifest.get("config", {}).get("digest", "")
            config = json.loads(blob_path(Path(models_dir), cfg_digest).read_bytes()) if cfg_digest else {}
        except (OSError, ValueError, FtpackError):
            continue
        size = sum(int(x.get("size", 0)) for x in manifest.get("layers", [])) + \
            int(manifest.get("config", {}).get("size", 0))
        out.append(StoreModel(ModelName(*parts), p, hashlib.sha256(raw).hexdigest(), size,
                              _dt.datetime.fromtimestamp(p.lstat().st_mtime, _dt.timezone.utc), manifest, config,
                              v2=tree == V2_DIR))
    return out


def _all_tags(models_dir: str | os.PathLike) -> list[StoreModel]:
    """Every readable tag in both trees, v2 first (shadowed legacy entries included)."""
    return _read_tree(Path(models_dir), V2_DIR) + _read_tree(Path(models_dir), "manifests")


def store_models(models_dir: str | os.PathLike) -> list[StoreModel]:
    """Every readable model under ``models_dir``, as Ollama lists them: ``manifests/`` and
    ``manifests-v2/`` (which shadows a legacy entry of the same name); bad ones skipped."""
    out: list[StoreModel] = []
    for m in _all_tags(models_dir):
        if m.manifest.get("mediaType") == MANIFEST_LIST_MEDIA_TYPE:
            continue  # a manifest list (per-runner children): referenced, not a model ftpack reads
        if not any(o.name.same_as(m.name) for o in out):
            out.append(m)
    return out


def find_store_model(models_dir: str | os.PathLike, name: ModelName) -> StoreModel | None:
    return next((m for m in store_models(models_dir) if m.name.same_as(name)), None)


def _referenced(models_dir: Path, manifest: dict[str, Any], seen: set[str]) -> set[str]:
    """Digests ``manifest`` keeps alive: its config and layers; a list's child manifests, theirs."""
    used = {x["digest"] for x in manifest.get("layers", []) + [manifest.get("config", {})] if x.get("digest")}
    for child in manifest.get("manifests", []) if manifest.get("mediaType") == MANIFEST_LIST_MEDIA_TYPE else []:
        d = child.get("digest")
        if not d or d in seen:
            continue
        seen.add(d)
        used.add(d)
        try:
            used |= _referenced(models_dir, json.loads(blob_path(models_dir, d).read_bytes()), seen)
        except (OSError, ValueError, FtpackError):
            continue
    return used


def _digests_in_use(models_dir: Path, skip: Path | None = None) -> set[str]:
    """Every blob some tag still needs, in both trees: layers, configs, v2 manifest blobs."""
    used: set[str] = set()
    for m in _all_tags(models_dir):
        if skip is not None and m.path == skip:
            continue
        if m.v2:
            used.add("sha256:" + m.digest)
        used |= _referenced(models_dir, m.manifest, set())
    return used


def _remove_unused_layers(models_dir: Path, manifest: dict[str, Any], own_blob: str | None = None) -> list[str]:
    """Ollama's Manifest.RemoveLayers: delete this manifest's blobs (and its own blob, for a
    v2 tag) that no manifest of either tree still uses."""
    used = _digests_in_use(models_dir)
    removed = []
    candidates = [x.get("digest") for x in manifest.get("layers", []) + [manifest.get("config", {})]]
    for d in [*candidates, own_blob]:
        if d and d not in used and d not in removed:
            blob_path(models_dir, d).unlink(missing_ok=True)
            removed.append(d)
    return removed


def _drop_tag(models_dir: Path, model: StoreModel) -> list[str]:
    """Remove one tag (a manifest file, or a v2 link) and the blobs nothing else uses."""
    model.path.unlink()
    _prune_empty_dirs(Path(models_dir) / (V2_DIR if model.v2 else "manifests"))
    return _remove_unused_layers(models_dir, model.manifest, "sha256:" + model.digest if model.v2 else None)


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
                              "file_type": ""}
    params = dict(req.parameters)
    if req.from_model is not None:
        base = base_model_layers(models_dir, req.from_model)
        layers += base.layers
        config.update(base.config)  # the whole base config, as create.go@0029bb5 copies it
        if not config.get("model_format"):  # a base written without one: describe its model layer
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
            _auto_renderer(config, req, params, summary.architecture)
    for key in ("renderer", "parser", "requires"):
        if getattr(req, key):
            config[key] = getattr(req, key)
    if req.capabilities:
        config["capabilities"] = list(dict.fromkeys([*(config.get("capabilities") or []), *req.capabilities]))
    if req.template:
        layers = _replace(layers, MEDIA_TEMPLATE, _write_blob_bytes(models_dir, req.template.encode("utf-8"),
                                                                    MEDIA_TEMPLATE))
    if req.system:
        layers = _replace(layers, MEDIA_SYSTEM, _write_blob_bytes(models_dir, req.system.encode("utf-8"), MEDIA_SYSTEM))
    for text in req.licenses:
        layers.append(_write_blob_bytes(models_dir, text.encode("utf-8"), MEDIA_LICENSE))
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
    cfg_layer = _write_blob_bytes(models_dir, (go_json(config_v2(config)) + "\n").encode("utf-8"), CONFIG_MEDIA_TYPE)
    return cfg_layer, layers, copied


#: model.ConfigV2's JSON fields in struct order, and whether each is ``omitempty``
#: (types/model/config.go@0abf7fa). Fields of older configs (architecture, os) are dropped.
CONFIG_V2_FIELDS = (("model_format", False), ("model_family", False), ("model_families", False),
                    ("model_type", False), ("file_type", False), ("generation_defaults", True),
                    ("renderer", True), ("parser", True), ("requires", True), ("remote_host", True),
                    ("remote_model", True), ("capabilities", True), ("capabilities_explicit", True),
                    ("context_length", True), ("embedding_length", True), ("base_name", True), ("draft", True))


def config_v2(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as Go's json.Marshal writes a ConfigV2: its fields in order, empty
    ``omitempty`` ones left out, unknown ones (``architecture``, ``os``) dropped."""
    out: dict[str, Any] = {}
    for key, omitempty in CONFIG_V2_FIELDS:
        value = config.get(key)
        if omitempty and not value:
            continue
        out[key] = value if value is not None or key == "model_families" else ""
    return out


def _auto_renderer(config: dict[str, Any], req: RegistrationRequest, params: dict[str, Any], arch: str) -> None:
    """create.go@0029bb5, "Auto-detect renderer, parser, and stop tokens from GGUF architecture":
    fills in whichever of renderer/parser the request and the base left empty, and gemma4's
    stop when the request gives no stop."""
    from ftpack.ollama.renderers import ARCHITECTURE_RENDERERS

    if arch not in ARCHITECTURE_RENDERERS:
        return
    renderer, parser, stop = ARCHITECTURE_RENDERERS[arch]
    if (req.renderer or config.get("renderer")) and (req.parser or config.get("parser")):
        return
    config["renderer"] = req.renderer or config.get("renderer") or renderer
    config["parser"] = req.parser or config.get("parser") or parser
    if stop and "stop" not in req.parameters:
        params["stop"] = list(stop)


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
    config: dict[str, Any]


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
    return BaseLayers(base.name, layers, model["digest"], int(model["size"]), dict(base.config or {}))


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
    for old in [m for m in _all_tags(models_dir) if m.name.same_as(parsed) and m.path != path]:
        _drop_tag(models_dir, old)  # a v2 tag of this name would shadow the new manifest
    if existing is not None and existing.path == path:
        _remove_unused_layers(models_dir, existing.manifest)
    reporter.info(f"wrote manifest {path} ({len(layers)} layers, {human_bytes(copied)} copied)")
    model = next(x for x in layers if x["mediaType"] == MEDIA_MODEL)
    adapter = next((x for x in layers if x["mediaType"] == MEDIA_ADAPTER), None)
    return StoreResult(parsed, path, hashlib.sha256(data).hexdigest(), model["digest"], copied,
                       existing is not None, adapter["digest"] if adapter else None)


def remove_model(models_dir: str | os.PathLike, name: str) -> list[str]:
    """Delete a model from the store (its tags in both trees); blobs any other manifest uses
    stay. Returns removed digests."""
    models_dir = Path(models_dir).expanduser()
    parsed = parse_model_name(name)
    tags = [m for m in _all_tags(models_dir) if m.name.same_as(parsed)] if models_dir.exists() else []
    if not tags:
        raise FtpackError(f"Model {parsed.display} is not in the Ollama store at {models_dir}.",
                          "See `ftpack list --offline --all` for the models there.", code=2)
    removed: list[str] = []
    for tag in tags:
        removed += _drop_tag(models_dir, tag)
    return removed
