"""A model already in Ollama as a training base: ``--base ollama:NAME[:TAG]``.

Most users already have the model they want to tune in Ollama (``ollama pull llama3.2``).
This module reads it from Ollama's own store, the way Ollama does: the manifest
(``manifests/registry.ollama.ai/library/NAME/TAG``, or ``manifests/HOST/NAMESPACE/NAME/TAG``
for a full name), its ``application/vnd.ollama.image.model`` layer — the GGUF blob that
is trained on (dequantized by :func:`ftpack.training.bases.materialise_gguf`) — and the
template, system, params (stops) and messages layers that say how Ollama prompts it.

Store: ``--models-dir``, else ``OLLAMA_MODELS``, else the user's ``~/.ollama/models``,
else the Linux service's ``/usr/share/ollama/.ollama/models``
(:func:`ftpack.core.locations.ollama_models_dir`). When an Ollama server answers, its
``/api/show`` confirms the model and which blob it runs (and finds the store when the
server keeps its models somewhere else that this user can read).

Everything that would make training pointless fails here, before any work: an unknown
name (listing the nearest local models, as ``ollama list`` shows them), a model without
a GGUF model layer (safetensors/MLX tensor-layer models), an adapter, an architecture
transformers cannot load from GGUF.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftpack.core.errors import FtpackError, bad_input

#: What marks a base as an Ollama model on the command line and in config files.
PREFIX = "ollama:"
#: Media types of the layers this module reads (ftpack.ollama.store has the full list).
MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_SYSTEM = "application/vnd.ollama.image.system"
MEDIA_PARAMS = "application/vnd.ollama.image.params"
MEDIA_MESSAGES = "application/vnd.ollama.image.messages"
MEDIA_TENSOR = "application/vnd.ollama.image.tensor"
#: GGUF file types that are not quantized.
_UNQUANTIZED = ("F32", "F16", "BF16")


def is_ollama_base(base: Any) -> bool:
    """Whether ``--base`` names an Ollama model (``ollama:NAME[:TAG]``)."""
    return str(base or "").strip().lower().startswith(PREFIX)


@dataclass(frozen=True)
class OllamaBase:
    """A model in Ollama's store, read for training: its GGUF blob and how Ollama prompts it."""

    name: Any  # ftpack.ollama.names.ModelName
    store: Path
    manifest_path: Path
    manifest_digest: str  # sha256 of the manifest file: what `ollama list` shows as ID
    model_blob: Path
    model_digest: str  # "sha256:<hex>" of the GGUF blob
    model_size: int
    architecture: str  # GGUF general.architecture
    file_type: str  # "Q4_K_M", "F16", …
    template: str | None  # TEMPLATE layer (None: the model has none)
    system: str  # SYSTEM layer ("" when none)
    parameters: dict[str, Any] = field(default_factory=dict)  # params layer (stop, temperature, …)
    messages: tuple[dict[str, str], ...] = ()
    renderer: str = ""  # the config's built-in renderer (a Go-coded prompt format), if any
    parser: str = ""  # the config's built-in output parser (thinking, tool calls), if any
    model_type: str = ""  # the config's parameter count as Ollama writes it ("135.00M")
    requires: str = ""  # the config's oldest Ollama version for the model
    capabilities: tuple[str, ...] = ()  # the config's declared capabilities
    confirmed_by: str | None = None  # the server whose /api/show named this same blob

    @property
    def display(self) -> str:
        """The name as `ollama list` shows it (``llama3.2:latest``)."""
        return self.name.display

    @property
    def reference(self) -> str:
        """What ``--base`` holds for this model (``ollama:llama3.2:latest``)."""
        return PREFIX + self.display

    @property
    def stop(self) -> tuple[str, ...]:
        value = self.parameters.get("stop") or ()
        return tuple(str(s) for s in ([value] if isinstance(value, str) else value))

    @property
    def quantized(self) -> bool:
        return self.file_type.upper() not in _UNQUANTIZED

    @property
    def bits(self) -> int | None:
        """Bits per weight of the quantization type (4 for Q4_K_M, IQ4_XS; None when unknown)."""
        m = re.match(r"^(?:I?Q|TQ)(\d)", self.file_type.upper())
        return int(m.group(1)) if m else None

    @property
    def quantization_note(self) -> str:
        """In plain words what training on this blob means."""
        if not self.quantized:
            return (f"{self.reference} is stored unquantized ({self.file_type}): training starts from its "
                    "original weights.")
        bits = f"{self.bits}-bit" if self.bits else "quantized"
        return (f"{self.reference} is stored quantized ({self.file_type}): training happens on a dequantized "
                f"{bits} model — the weights carry the {self.file_type} rounding, not the original "
                "16-bit weights.")

    def as_record(self) -> dict[str, Any]:
        """What build.json records about the base."""
        return {"name": self.display, "digest": self.model_digest, "bytes": self.model_size,
                "store": str(self.store), "architecture": self.architecture, "file_type": self.file_type,
                "quantized": self.quantized, "note": self.quantization_note, "confirmed_by": self.confirmed_by}


def read_ollama_base(base: str, *, models_dir: str | Path | None = None, host: str | None = None,
                     use_server: bool = True) -> OllamaBase:
    """Read ``ollama:NAME[:TAG]`` from Ollama's store (and, with a server, check it against
    ``/api/show``). Raises a user error naming the problem and what to do about it."""
    from ftpack.core.locations import ollama_models_dir
    from ftpack.ollama.names import parse_model_name
    from ftpack.ollama.store import find_store_model

    ref = str(base).strip()[len(PREFIX):].strip() if is_ollama_base(base) else str(base).strip()
    if not ref:
        raise bad_input("--base ollama: needs a model name, e.g. --base ollama:llama3.2.",
                        "`ollama list` shows the models you have.")
    name = parse_model_name(ref)
    store = Path(models_dir).expanduser() if models_dir else ollama_models_dir()
    model = find_store_model(store, name) if store.is_dir() else None
    confirmed = None
    if use_server:
        model, store, confirmed = _check_with_server(name, model, store, host)
    if model is None:
        raise _unknown_model(name, store)
    return _read_model(model, store, confirmed)


# -- the store ------------------------------------------------------------------------------

def _read_model(model: Any, store: Path, confirmed: str | None) -> OllamaBase:
    from ftpack.ollama.store import blob_path, read_gguf_summary

    layer = model.layer(MEDIA_MODEL)
    shown = model.name.display
    if layer is None:
        kinds = sorted({str(x.get("mediaType", "")).rsplit(".", 1)[-1] for x in model.manifest.get("layers", [])})
        tensors = any(x.get("mediaType") == MEDIA_TENSOR for x in model.manifest.get("layers", []))
        raise bad_input(f"{shown} has no GGUF model layer in {model.path} (its layers: {', '.join(kinds) or 'none'})"
                        + ("; it is stored as separate tensors (a safetensors/MLX model), which ftpack cannot "
                           "train from the Ollama store" if tensors else "") + ".",
                        "Use a GGUF model from the Ollama library, or train from the model's Hugging Face "
                        "original (--base ORG/NAME).")
    digest = str(layer.get("digest", ""))
    blob = blob_path(store, digest)
    if not blob.is_file():
        raise FtpackError(f"{shown}: its model blob {blob} is missing from the store.",
                          f"Pull it again (`ollama pull {shown}`).", code=2)
    with open(blob, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise bad_input(f"{shown}: its model blob {blob} is not a GGUF file.",
                            "ftpack trains GGUF models from the Ollama store only.")
    config = model.config or {}
    if config.get("model_format") not in (None, "", "gguf"):
        raise bad_input(f"{shown} is a {config.get('model_format')} model, not GGUF.")
    summary = read_gguf_summary(blob)
    if summary.kind == "adapter":
        raise bad_input(f"{shown}'s model layer is a LoRA adapter, not a base model.")
    _check_architecture(shown, summary.architecture)
    text = _layer_text(store, model, MEDIA_TEMPLATE)
    system = _layer_text(store, model, MEDIA_SYSTEM) or ""
    params = _layer_json(store, model, MEDIA_PARAMS) or {}
    messages = _layer_json(store, model, MEDIA_MESSAGES) or []
    file_type = summary.file_type if summary.file_type != "unknown" else str(config.get("file_type") or "unknown")
    return OllamaBase(
        name=model.name, store=store, manifest_path=model.path, manifest_digest=model.digest, model_blob=blob,
        model_digest=digest.replace("-", ":", 1) if digest.startswith("sha256-") else digest,
        model_size=blob.stat().st_size, architecture=summary.architecture, file_type=file_type, template=text,
        system=system, parameters=params if isinstance(params, dict) else {},
        messages=tuple(m for m in messages if isinstance(m, dict)) if isinstance(messages, list) else (),
        renderer=str(config.get("renderer") or ""), parser=str(config.get("parser") or ""),
        model_type=str(config.get("model_type") or ""), requires=str(config.get("requires") or ""),
        capabilities=tuple(str(c) for c in config.get("capabilities") or () if isinstance(c, str)),
        confirmed_by=confirmed)


def _layer_text(store: Path, model: Any, media: str) -> str | None:
    from ftpack.ollama.store import blob_path

    layer = model.layer(media)
    if layer is None:
        return None
    try:
        return blob_path(store, layer["digest"]).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FtpackError(f"{model.name.display}: cannot read its {media.rsplit('.', 1)[-1]} layer ({exc}).",
                          f"Pull it again (`ollama pull {model.name.display}`).", code=2) from None


def _layer_json(store: Path, model: Any, media: str) -> Any:
    text = _layer_text(store, model, media)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise FtpackError(f"{model.name.display}: its {media.rsplit('.', 1)[-1]} layer is not valid JSON.",
                          f"Pull it again (`ollama pull {model.name.display}`).", code=2) from None


def _check_architecture(shown: str, arch: str) -> None:
    """transformers must be able to dequantize the blob into a causal LM: its GGUF loaders'
    own tables (fast path and legacy, :func:`ftpack.gguf.vendored.transformers_gguf_architectures`;
    read without importing torch)."""
    from ftpack.gguf.vendored import transformers_gguf_architectures

    known = transformers_gguf_architectures()
    if arch not in known:
        raise bad_input(f"{shown} is a {arch!r} model: transformers cannot load that architecture from GGUF, so "
                        "ftpack cannot train it from the Ollama store.",
                        f"Architectures it can: {', '.join(known)}. Otherwise train from the model's Hugging Face "
                        "original (--base ORG/NAME).")


# -- the server -----------------------------------------------------------------------------

def _check_with_server(name: Any, model: Any, store: Path, host: str | None) -> tuple[Any, Path, str | None]:
    """(model, store, confirming host): /api/show names the blob the server runs; it must be
    the one in the store read here. A model only the server lists is read from the store its
    blob lies in, when this user can read it. No server: the store alone decides."""
    from ftpack.ollama.probe import probe_server
    from ftpack.ollama.store import MEDIA_MODEL as _MODEL, find_store_model

    probe = probe_server(host, timeout=2.0)
    if not probe.reachable:
        return model, store, None
    from ftpack.ollama.api import OllamaServer

    with OllamaServer(probe.host) as server:
        shown = server.show(name.display)
    if shown is None:
        return model, store, None
    blob = _from_blob(str(shown.get("modelfile") or ""))
    if blob is None:  # nothing to compare: the server has the model, the store decides which bytes
        return model, store, probe.host if model is not None else None
    digest = "sha256:" + blob.name.split("-", 1)[1]
    if model is not None:
        layer = model.layer(_MODEL) or {}
        if str(layer.get("digest", "")).replace("-", ":", 1) == digest:
            return model, store, probe.host
        raise FtpackError(f"The Ollama server at {probe.host} runs {name.display} from blob {digest[:19]}…, but "
                          f"the store at {store} holds another version ({str(layer.get('digest'))[:19]}…).",
                          "Point --models-dir (or OLLAMA_MODELS) at the store the server uses, or "
                          f"`ollama pull {name.display}` again so both agree.", code=2)
    other = blob.parent.parent
    found = find_store_model(other, name) if blob.is_file() else None
    if found is None:
        raise FtpackError(f"{name.display} is on the Ollama server at {probe.host}, but its files ({blob}) "
                          "cannot be read here.",
                          "Pass --models-dir with the server's store (the Linux service keeps it in "
                          "/usr/share/ollama/.ollama/models) and make it readable for this user.", code=2)
    return found, other, probe.host


def _from_blob(modelfile: str) -> Path | None:
    """The blob path in the first ``FROM`` line of a Modelfile /api/show returned."""
    for line in modelfile.splitlines():
        m = re.match(r"^\s*FROM\s+(.+?)\s*$", line, re.IGNORECASE)
        if m and re.search(r"sha256[-:][0-9a-f]{64}$", m.group(1)):
            return Path(m.group(1).replace("sha256:", "sha256-"))
    return None


# -- an unknown name: the nearest models, as `ollama list` shows them ------------------------

def _unknown_model(name: Any, store: Path) -> FtpackError:
    from ftpack.ollama.store import store_models

    models = store_models(store) if store.is_dir() else []
    if not models:
        return bad_input(f"{name.display} is not in Ollama: the store at {store} holds no models.",
                         f"`ollama pull {name.model}` first, or point --models-dir / OLLAMA_MODELS at the store "
                         "that has it.")
    nearest = nearest_models(name, models)
    table = list_table(nearest)
    return bad_input(f"{name.display} is not in the Ollama store at {store}. Nearest local models:\n{table}",
                     f"Use one of these (--base ollama:NAME:TAG), or `ollama pull {name.model}` first.")


def nearest_models(name: Any, models: list[Any], n: int = 5) -> list[Any]:
    """Models whose name is closest to ``name`` (the same model name first), at most ``n``;
    every model (up to ``n``) when none is close."""
    by_display = {m.name.display: m for m in models}
    same = [m for m in models if m.name.model.lower() == name.model.lower()]
    close = difflib.get_close_matches(name.display, list(by_display), n=n, cutoff=0.5)
    close += difflib.get_close_matches(name.model, [m.name.model for m in models], n=n, cutoff=0.5)
    picked = same + [by_display[c] for c in close if c in by_display]
    picked += [m for m in models if m.name.model in close]
    unique = list({m.name.display: m for m in picked}.values())
    return (unique or sorted(models, key=lambda m: m.modified, reverse=True))[:n]


def list_table(models: list[Any], now: _dt.datetime | None = None) -> str:
    """``ollama list``'s columns: NAME, ID (12 hex digits of the manifest digest), SIZE, MODIFIED."""
    from ftpack.core.atomic import human_bytes

    rows = [("NAME", "ID", "SIZE", "MODIFIED")]
    for m in models:
        rows.append((m.name.display, m.digest[:12], human_bytes(m.size), _ago(m.modified, now)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("    ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _ago(when: _dt.datetime, now: _dt.datetime | None = None) -> str:
    seconds = max(0, int(((now or _dt.datetime.now(_dt.timezone.utc)) - when).total_seconds()))
    for unit, size in (("year", 365 * 86400), ("month", 30 * 86400), ("week", 7 * 86400), ("day", 86400),
                       ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            k = seconds // size
            return f"{k} {unit}{'s' if k > 1 else ''} ago"
    return "Less than a minute ago"
