"""Ollama's model store written directly, byte-compatible with what ``ollama create`` writes.

For machines where no Ollama server runs (CI, a build box): ``ftpack register --offline``
puts the GGUF and every other layer into ``$OLLAMA_MODELS`` (default
``~/.ollama/models``) exactly as Ollama's ``server/create.go`` would — same media types,
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
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable

from ftpack.core.atomic import atomic_path, check_free_space, human_bytes
from ftpack.core.locations import ftpack_home, ollama_models_dir
from ftpack.core.errors import FtpackError, bad_input

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_ADAPTER = "application/vnd.ollama.image.adapter"
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_SYSTEM = "application/vnd.ollama.image.system"
MEDIA_PARAMS = "application/vnd.ollama.image.params"
MEDIA_MESSAGES = "application/vnd.ollama.image.messages"
MEDIA_LICENSE = "application/vnd.ollama.image.license"

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
DIGEST_RE = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")

#: llama_ftype numbers -> Ollama's FileType.String() (fs/ggml/type.go).
FILE_TYPE_NAMES = {1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
                   12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M",
                   18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS",
                   24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS",
                   31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0"}


# -- model names (types/model/name.go) -------------------------------------------------------

@dataclass(frozen=True)
class ModelName:
    """A fully qualified Ollama model name: host/namespace/model:tag."""

    host: str
    namespace: str
    model: str
    tag: str

    @property
    def display(self) -> str:
        """Ollama's DisplayShortest: what `ollama list` shows and `ollama run` accepts."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def parts(self) -> tuple[str, str, str, str]:
        return (self.host, self.namespace, self.model, self.tag)

    def same_as(self, other: "ModelName") -> bool:
        """Ollama matches names case-insensitively (getExistingName / EqualFold)."""
        return all(a.lower() == b.lower() for a, b in zip(self.parts, other.parts))


def _valid_part(kind: str, s: str) -> bool:
    if not 1 <= len(s) <= (350 if kind == "host" else 80):
        return False
    for i, b in enumerate(s.encode("utf-8")):
        c = chr(b)
        alnum = ("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9") or c == "_"
        if i == 0:
            if not alnum:
                return False
        elif c in "-_":
            continue
        elif c == ".":
            if kind == "namespace":
                return False
        elif c == ":":
            if kind != "host":
                return False
        elif not alnum:
            return False
    return True


def parse_model_name(name: str) -> ModelName:
    """Parse and validate ``[host/][namespace/]model[:tag]`` with Ollama's rules.

    Raises a bad-input :class:`FtpackError` that says which part is wrong and why.
    """
    s = name.strip()
    host = namespace = tag = ""
    if s.rfind(":") > s.rfind("/"):
        s, _, tag = s.rpartition(":")
        s, tag = s or "!MISSING!", tag or "!MISSING!"
    if "/" in s:
        s, _, model = s.rpartition("/")
        s, model = s or "!MISSING!", model or "!MISSING!"
        if "/" in s:
            s, _, namespace = s.rpartition("/")
            s, namespace = s or "!MISSING!", namespace or "!MISSING!"
            host = s.split("://", 1)[1] if "://" in s else s
        else:
            namespace = s
    else:
        model = s
    parsed = ModelName(host or DEFAULT_HOST, namespace or DEFAULT_NAMESPACE, model, tag or DEFAULT_TAG)
    for kind, part in zip(("host", "namespace", "model", "tag"), parsed.parts):
        if not _valid_part(kind, part):
            allowed = {"host": "letters, digits, '_', '-', '.', ':'", "namespace": "letters, digits, '_', '-'",
                       "model": "letters, digits, '_', '-', '.'", "tag": "letters, digits, '_', '-', '.'"}[kind]
            limit = 350 if kind == "host" else 80
            shown = "" if part == "!MISSING!" else part
            raise bad_input(
                f"Invalid Ollama model name {name!r}: the {kind} {shown!r} is not valid.",
                f"Ollama names are [host/][namespace/]model[:tag]; each part starts with a letter, digit or '_' "
                f"and holds {allowed} (1-{limit} characters), e.g. my-model:v1.")
    return parsed


# -- Go's encoding/json, byte for byte ------------------------------------------------------

_GO_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _go_str(s: str) -> str:
    parts = []
    for ch in s:
        if ch in _GO_ESCAPES:
            parts.append(_GO_ESCAPES[ch])
        elif ord(ch) < 0x20 or ch in "<>&\u2028\u2029":  # json.Encoder escapes HTML by default
            parts.append("\\u%04x" % ord(ch))
        elif 0xD800 <= ord(ch) <= 0xDFFF:
            parts.append("\\ufffd")
        else:
            parts.append(ch)
    return '"' + "".join(parts) + '"'


def _go_float(f: float) -> str:
    """strconv 'f'/-1 layout, or 'e' (cleaned exponent) outside [1e-6, 1e21), as encoding/json."""
    if f == 0:
        return "-0" if str(f).startswith("-") else "0"  # strconv keeps the sign of -0
    d = Decimal(repr(f)).normalize()
    sign, digits, exp = d.as_tuple()
    ds = "".join(map(str, digits))
    lead = exp + len(ds)  # position of the decimal point relative to the digit string
    neg = "-" if sign else ""
    if 1e-6 <= abs(f) < 1e21:
        if lead <= 0:
            return f"{neg}0.{'0' * -lead}{ds}"
        if lead >= len(ds):
            return f"{neg}{ds}{'0' * (lead - len(ds))}"
        return f"{neg}{ds[:lead]}.{ds[lead:]}"
    e = lead - 1
    mant = ds[0] + (f".{ds[1:]}" if len(ds) > 1 else "")
    return f"{neg}{mant}e{'-' if e < 0 else '+'}{abs(e) if e < 0 and abs(e) < 10 else f'{abs(e):02d}'}"


def go_json(value: Any, *, sort_keys: bool = False) -> str:
    """Compact JSON exactly as Go's json.Marshal writes it (maps: ``sort_keys``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, str):
        return _go_str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(go_json(v, sort_keys=sort_keys) for v in value) + "]"
    if isinstance(value, dict):
        items = sorted(value.items()) if sort_keys else list(value.items())
        return "{" + ",".join(_go_str(k) + ":" + go_json(v, sort_keys=sort_keys) for k, v in items) + "}"
    raise TypeError(f"go_json: cannot encode {type(value).__name__}")


def _as_go_decoded(value: Any) -> Any:
    """A request value as the server's map[string]any decoding holds it (numbers: float64)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_as_go_decoded(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_go_decoded(v) for k, v in value.items()}
    return value


# -- what a registration carries --------------------------------------------------------

@dataclass
class RegistrationRequest:
    """The content of one ``/api/create`` (or offline store write), from a Modelfile."""

    model_path: Path
    adapter_path: Path | None = None
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)  # typed (modelfile.parameter_value)
    messages: list[dict[str, str]] = field(default_factory=list)
    licenses: list[str] = field(default_factory=list)

    @classmethod
    def from_modelfile(cls, modelfile: str | os.PathLike) -> "RegistrationRequest":
        """Read a Modelfile (Ollama's grammar); FROM/ADAPTER must be existing GGUF files."""
        from ftpack.ollama.modelfile import read_modelfile, resolve_path

        spec = read_modelfile(modelfile)
        model_path = resolve_path(spec.from_path, modelfile)
        if not model_path.is_file():
            raise bad_input(f"{modelfile}: FROM {spec.from_path} is not an existing file ({model_path}).",
                            "ftpack registers a local GGUF; check the path (it is relative to the Modelfile).")
        adapter = None
        if spec.adapter is not None:
            adapter = resolve_path(spec.adapter, modelfile)
            if not adapter.is_file():
                raise bad_input(f"{modelfile}: ADAPTER {spec.adapter} is not an existing file ({adapter}).")
        for p in [model_path] + ([adapter] if adapter else []):
            with open(p, "rb") as fh:
                if fh.read(4) != b"GGUF":
                    raise bad_input(f"{p} is not a GGUF file.", "Ollama's files-based create takes GGUF files.")
        return cls(model_path=model_path, adapter_path=adapter, template=spec.template, system=spec.system,
                   parameters=spec.typed_parameters(),
                   messages=[{"role": r, "content": c} for r, c in spec.messages], licenses=list(spec.licenses))


@dataclass
class GGUFSummary:
    """What Ollama's create reads from a GGUF header for the config blob."""

    architecture: str
    kind: str
    file_type: str
    parameter_count: int


def read_gguf_summary(path: str | os.PathLike) -> GGUFSummary:
    """general.architecture / general.type / general.file_type (uint32 only, as Ollama) and
    the parameter count (sum of tensor elements, which Ollama recomputes on load)."""
    from gguf import GGUFReader, GGUFValueType

    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # gguf raises ValueError/struct errors on damaged files
        raise FtpackError(f"{path} is not a readable GGUF file ({exc}).") from None

    def field_value(key: str, vtype):
        f = reader.fields.get(key)
        if f is None or not f.types or f.types[0] != vtype:
            return None
        return f.contents()

    ft = field_value("general.file_type", GGUFValueType.UINT32)
    return GGUFSummary(
        architecture=field_value("general.architecture", GGUFValueType.STRING) or "unknown",
        kind=field_value("general.type", GGUFValueType.STRING) or "unknown",
        file_type=FILE_TYPE_NAMES.get(ft, "unknown") if ft else "unknown",
        parameter_count=sum(int(t.n_elements) for t in reader.tensors),
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

def default_models_dir() -> Path:
    """The store a local `ollama serve` uses (see :func:`ftpack.core.locations.ollama_models_dir`)."""
    return ollama_models_dir()


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
        if not all(_valid_part(k, x) for k, x in zip(("host", "namespace", "model", "tag"), parts)):
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
    """Write every blob of ``req`` into the store; return (config layer, layers, bytes copied)."""
    copied = 0
    layers: list[dict[str, Any]] = []
    config: dict[str, Any] = {"model_format": "", "model_family": "", "model_families": None, "model_type": "",
                              "file_type": "", "architecture": "amd64", "os": "linux"}
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
            config["model_format"] = config["model_format"] or "gguf"
            config["model_family"] = config["model_family"] or summary.architecture
            config["model_type"] = config["model_type"] or human_number(summary.parameter_count)
            config["file_type"] = config["file_type"] or summary.file_type
            config["model_families"] = (config["model_families"] or []) + [summary.architecture]
    if req.template:
        layers.append(_write_blob_bytes(models_dir, req.template.encode("utf-8"), MEDIA_TEMPLATE))
    if req.system:
        layers.append(_write_blob_bytes(models_dir, req.system.encode("utf-8"), MEDIA_SYSTEM))
    for text in req.licenses:
        layers.append(_write_blob_bytes(models_dir, text.encode("utf-8"), MEDIA_LICENSE))
    if req.parameters:
        params = go_json(_as_go_decoded(req.parameters), sort_keys=True) + "\n"
        layers.append(_write_blob_bytes(models_dir, params.encode("utf-8"), MEDIA_PARAMS))
    if req.messages:
        msgs = [{"role": m["role"].lower(), "content": m["content"]} for m in req.messages]
        layers.append(_write_blob_bytes(models_dir, (go_json(msgs) + "\n").encode("utf-8"), MEDIA_MESSAGES))
    cfg_layer = _write_blob_bytes(models_dir, (go_json(config) + "\n").encode("utf-8"), CONFIG_MEDIA_TYPE)
    return cfg_layer, layers, copied


@dataclass
class StoreResult:
    name: ModelName
    manifest_path: Path
    manifest_digest: str
    model_digest: str
    bytes_copied: int
    replaced: bool


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
    return StoreResult(parsed, path, hashlib.sha256(data).hexdigest(), layers[0]["digest"], copied,
                       existing is not None)


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


# -- which Ollama models ftpack made ------------------------------------------------------------

def index_path() -> Path:
    return ftpack_home() / "registered.json"


def load_index() -> list[dict[str, Any]]:
    """The registrations ftpack recorded (newest last); a damaged file counts as empty."""
    try:
        data = json.loads(index_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [e for e in data.get("models", []) if isinstance(e, dict)] if isinstance(data, dict) else []


def save_index(entries: Iterable[dict[str, Any]]) -> None:
    from ftpack.core.atomic import write_json

    write_json(index_path(), {"version": 1, "models": list(entries)})


def record_registration(entry: dict[str, Any]) -> None:
    """Remember that ftpack created ``entry['name']`` at ``entry['where']`` (replacing older entries)."""
    name = parse_model_name(entry["name"])
    keep = [e for e in load_index()
            if not (e.get("where") == entry["where"] and _same_name(e.get("name", ""), name))]
    save_index(keep + [entry])


def forget_registration(where: str, name: str) -> None:
    parsed = parse_model_name(name)
    save_index([e for e in load_index() if not (e.get("where") == where and _same_name(e.get("name", ""), parsed))])


def _same_name(text: str, name: ModelName) -> bool:
    try:
        return parse_model_name(text).same_as(name)
    except FtpackError:
        return False


def find_registration(where: str, name: ModelName, manifest_digest: str) -> dict[str, Any] | None:
    """The index entry for ``name`` at ``where`` whose manifest digest still matches (else None):
    a model re-created by other means is no longer claimed as ftpack's."""
    for e in reversed(load_index()):
        if e.get("where") == where and _same_name(e.get("name", ""), name) and e.get("manifest_digest") == manifest_digest:
            return e
    return None


def store_where(models_dir: str | os.PathLike) -> str:
    return f"store:{Path(models_dir).expanduser().resolve()}"
