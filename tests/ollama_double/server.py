"""A faithful double of Ollama's HTTP API for ftpack's tests (no Ollama binary exists here).

Behaviour, status codes and error texts follow ollama/ollama ``server/routes.go``,
``server/create.go``, ``manifest/`` and ``types/model/name.go``; blobs and manifests are
stored in Ollama's on-disk layout (``blobs/sha256-<hex>``,
``manifests/<host>/<namespace>/<model>/<tag>``) with the bytes Go's encoder writes, so a
store written by the double and one written by ``ftpack register --offline`` can be
compared file by file, and the double lists models written offline without a restart
(like Ollama's model list, it re-reads the manifests on every ``/api/tags``).

One known simplification: since v0.30 Ollama re-encodes an uploaded GGUF with its
bundled ``llama-quantize`` (a "COPY" pass) before storing the model layer; no
llama-quantize exists here, so the double stores the uploaded blob itself as the model
layer (as Ollama 0.5.5–0.29 did, and as an ``ollama pull`` of a GGUF does).

/api/chat builds the prompt the way the real server picks (``server/routes.go@fb30760``
``chatModeForModel`` / ``usesOllamaRenderedChat``, ``server/images.go@fb30760``
``shouldPreferChatTemplate``): a config ``renderer`` first (Ollama's Go renderers, here
ftpack.ollama.renderers, proven equal to them in tests/test_renderers.py), else the Go
TEMPLATE unless ``OLLAMA_GO_TEMPLATE`` says otherwise or the GGUF's Jinja template shows more
capabilities, else the GGUF's own Jinja ``tokenizer.chat_template`` (llama-server's path;
rendered by an injected hook). The final chat object carries ``prompt`` and ``prompt_path``
so a test can see what was served and how; ``think`` defaults to true for a model whose
parser can think (``server/routes.go@e0c95a5``).

``version`` switches between today's server (0.34.2, the default: ``server/create.go@0029bb5``
refuses adapters and typical_p, validates capabilities, writes ``model.ConfigV2``
(types/model/config.go@0abf7fa), auto-sets gemma4/laguna/nemotron_h renderers and inherits
a ``from`` model's whole config) and older releases for tests of the older behaviour.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

from .gojson import go_json

DIGEST_RE = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")
MANIFEST_MEDIA = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA = "application/vnd.docker.container.image.v1+json"
MEDIA = {k: f"application/vnd.ollama.image.{k}" for k in
         ("model", "adapter", "projector", "template", "system", "params", "messages", "license")}
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
              12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
              19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
              26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
              36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0"}


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# -- names (types/model/name.go) ------------------------------------------------------------

def _valid_part(kind: str, s: str) -> bool:
    limit = 350 if kind == "host" else 80
    if not 1 <= len(s) <= limit:
        return False
    for i, ch in enumerate(s.encode("utf-8")):
        c = chr(ch)
        ok_first = c.isascii() and (c.isalnum() or c == "_")
        if i == 0:
            if not ok_first:
                return False
            continue
        if c in "_-":
            continue
        if c == ".":
            if kind == "namespace":
                return False
            continue
        if c == ":":
            if kind != "host":
                return False
            continue
        if not ok_first:
            return False
    return True


def parse_name(s: str) -> tuple[str, str, str, str] | None:
    """model.ParseName + IsValid: (host, namespace, model, tag) or None."""
    host = namespace = tag = ""
    if s.rfind(":") > s.rfind("/"):
        i = s.rfind(":")
        s, tag = s[:i] or "!MISSING!", s[i + 1:] or "!MISSING!"
    if "/" not in s:
        model = s
    else:
        i = s.rfind("/")
        s, model = s[:i] or "!MISSING!", s[i + 1:] or "!MISSING!"
        if "/" not in s:
            namespace = s
        else:
            i = s.rfind("/")
            s, namespace = s[:i] or "!MISSING!", s[i + 1:] or "!MISSING!"
            host = s.split("://", 1)[1] if "://" in s else s
    parts = (host or "registry.ollama.ai", namespace or "library", model, tag or "latest")
    kinds = ("host", "namespace", "model", "tag")
    return parts if all(_valid_part(k, p) for k, p in zip(kinds, parts)) else None


def display_shortest(parts: tuple[str, str, str, str]) -> str:
    host, ns, model, tag = parts
    if host.lower() != "registry.ollama.ai":
        return f"{host}/{ns}/{model}:{tag}"
    if ns.lower() != "library":
        return f"{ns}/{model}:{tag}"
    return f"{model}:{tag}"


# -- GGUF metadata (what Ollama's ggml.Decode exposes to create) ------------------------------

_GGUF_INFO: dict[tuple[str, int], dict[str, Any]] = {}


def gguf_info(path: Path) -> dict[str, Any]:
    """Blobs are named by their content, so one parse per blob is enough (Ollama caches GGUF
    metadata too); gguf-py's reader takes seconds on a real tokenizer."""
    key = (str(path), path.stat().st_size)
    if key not in _GGUF_INFO:
        _GGUF_INFO[key] = _read_gguf_info(path)
    return dict(_GGUF_INFO[key])


def _read_gguf_info(path: Path) -> dict[str, Any]:
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(path))

    def scalar(key: str, want_type=None):
        f = reader.fields.get(key)
        if f is None:
            return None
        if want_type is not None and f.types[:1] != [want_type]:
            return None
        return f.contents()

    params = sum(int(t.n_elements) for t in reader.tensors)
    ft = scalar("general.file_type", GGUFValueType.UINT32)
    return {"architecture": scalar("general.architecture", GGUFValueType.STRING) or "unknown",
            "kind": scalar("general.type", GGUFValueType.STRING) or "unknown",
            "file_type": FILE_TYPES.get(ft, "unknown") if ft else "unknown",
            "parameter_count": params,
            "chat_template": scalar("tokenizer.chat_template", GGUFValueType.STRING) or ""}


def human_number(b: int) -> str:
    """format.HumanNumber."""
    if b >= 1_000_000_000:
        n = b / 1_000_000_000
        return f"{n:.0f}B" if n == int(n) else f"{n:.1f}B"
    if b >= 1_000_000:
        n = b / 1_000_000
        return f"{n:.0f}M" if n == int(n) else f"{n:.2f}M"
    if b >= 1000:
        return f"{b / 1000:.0f}K"
    return str(b)


# -- the store ------------------------------------------------------------------------------

class Store:
    """Ollama's model store under ``root`` (OLLAMA_MODELS)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "manifests").mkdir(parents=True, exist_ok=True)

    def blob_path(self, digest: str) -> Path:
        if not DIGEST_RE.match(digest):
            raise ApiError(400, "invalid digest format")
        return self.root / "blobs" / digest.replace(":", "-")

    def new_layer(self, data: bytes, media: str) -> dict[str, Any]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        status = "using existing layer"
        if not path.exists():
            status = "creating new layer"
            fd, tmp = tempfile.mkstemp(prefix="sha256-", dir=self.root / "blobs")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
            os.chmod(path, 0o644)
        return {"mediaType": media, "digest": digest, "size": len(data), "_status": f"{status} {digest}"}

    def manifest_path(self, parts: tuple[str, str, str, str]) -> Path:
        return self.root / "manifests" / Path(*parts)

    def manifests(self) -> dict[tuple[str, str, str, str], Path]:
        out = {}
        for p in (self.root / "manifests").glob("*/*/*/*"):
            if p.is_file():
                parts = tuple(p.relative_to(self.root / "manifests").parts)
                if all(_valid_part(k, x) for k, x in zip(("host", "namespace", "model", "tag"), parts)):
                    out[parts] = p
        return out

    def existing_name(self, parts: tuple[str, str, str, str]) -> tuple[str, str, str, str]:
        """getExistingName: adopt the case of parts that already exist."""
        n = list(parts)
        for e in self.manifests():
            for i in range(4):
                if e[i].lower() == n[i].lower():
                    n[i] = e[i]
        return tuple(n)  # type: ignore[return-value]

    def read_manifest(self, parts) -> dict[str, Any] | None:
        p = self.manifest_path(parts)
        try:
            return json.loads(p.read_bytes())
        except FileNotFoundError:
            return None

    def write_manifest(self, parts, config: dict, layers: list[dict]) -> None:
        p = self.manifest_path(parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        m = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA, "config": config, "layers": layers}
        p.write_bytes((go_json(m) + "\n").encode())

    def in_use(self) -> set[str]:
        used = set()
        for p in self.manifests().values():
            try:
                m = json.loads(p.read_bytes())
            except ValueError:
                continue
            for layer in m.get("layers", []) + [m.get("config", {})]:
                if layer.get("digest"):
                    used.add(layer["digest"])
        return used

    def remove_layers(self, manifest: dict) -> None:
        used = self.in_use()
        for layer in manifest.get("layers", []) + [manifest.get("config", {})]:
            d = layer.get("digest")
            if d and d not in used:
                self.blob_path(d).unlink(missing_ok=True)

    def prune_dirs(self) -> None:
        for d in sorted((self.root / "manifests").rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()


# -- the HTTP server -----------------------------------------------------------------------

Renderer = Callable[[str, list[dict]], str]
JinjaRenderer = Callable[[str, list[dict], Any], str]

#: The release the double answers as by default: today's (late 2026).
TODAY = "0.34.2"
#: server/create.go@0029bb5 errTypicalPDeprecated.
ERR_TYPICAL_P = ("typical_p is deprecated and cannot be set as a model parameter; pass it as a request option "
                 "instead")
#: types/model/capability.go (IsValid), newer main: the names /api/create accepts.
CAPABILITIES = ("completion", "tools", "insert", "vision", "embedding", "thinking", "image", "audio", "decision")
#: server/create.go@0029bb5, "Auto-detect renderer, parser, and stop tokens from GGUF architecture".
AUTO_RENDERERS = {"gemma4": ("gemma4", "gemma4", ["<turn|>"]), "laguna": ("laguna", "laguna", None),
                  "nemotron_h": ("nemotron-3-nano", "nemotron-3-nano", None),
                  "nemotron_h_moe": ("nemotron-3-nano", "nemotron-3-nano", None),
                  "nemotron_h_omni": ("nemotron-3-nano", "nemotron-3-nano", None)}
#: model/parsers whose HasThinkingSupport is true (server/images.go@a5165c5 parserCapabilities).
THINKING_PARSERS = ("qwen3.5", "gemma4", "laguna", "nemotron-3-nano")
#: types/model/config.go@0abf7fa ConfigV2 field order; True: omitempty.
CONFIG_V2 = (("model_format", False), ("model_family", False), ("model_families", False), ("model_type", False),
             ("file_type", False), ("generation_defaults", True), ("renderer", True), ("parser", True),
             ("requires", True), ("remote_host", True), ("remote_model", True), ("capabilities", True),
             ("capabilities_explicit", True), ("context_length", True), ("embedding_length", True),
             ("base_name", True), ("draft", True))
Generator = Callable[[Path, str, list[str], dict], Iterator[str]]


class OllamaDouble:
    """The double: ``start()`` serves on 127.0.0.1:<random port>; ``url`` is its OLLAMA_HOST."""

    def __init__(self, models_dir: Path, *, version: str = TODAY, renderer: Renderer | None = None,
                 generator: Generator | None = None, template_check: Callable[[str], str | None] | None = None,
                 adapters: str | None = None, jinja_renderer: JinjaRenderer | None = None,
                 go_template_env: str | None = None):
        """``adapters``: "accept" (Ollama 0.5.5 up to 0.34.0), "reject" (0.34.1 and later:
        400 before anything else is looked at; the default for those versions), or "fail"
        (take the request, then fail creating the model, as a broken adapter would).
        ``jinja_renderer(chat_template, messages, think)`` renders a GGUF's own template as
        llama-server would; ``go_template_env`` is OLLAMA_GO_TEMPLATE as the server sees it."""
        self.store = Store(models_dir)
        self.version = version
        self.today = _version_tuple(version) >= (0, 34, 1)
        # model.ConfigV2 without architecture/os (types/model/config.go@0abf7fa) from the 0.34 line on
        self.config_v2 = _version_tuple(version) >= (0, 34, 0)
        self.adapters = adapters or ("reject" if self.today else "accept")
        self.jinja_renderer = jinja_renderer
        self.go_template_env = go_template_env
        self.renderer = renderer
        self.generator = generator
        self.template_check = template_check
        self.requests: list[tuple[str, str]] = []  # (method, path) log, for tests
        self.lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "OllamaDouble":
        double = self

        class Handler(_Handler):
            owner = double

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # -- handlers ---------------------------------------------------------------------
    def head_blob(self, digest: str) -> tuple[int, Any]:
        path = self.store.blob_path(digest)
        if not path.exists():
            raise ApiError(404, f'blob "{digest}" not found')
        return 200, None

    def create_blob(self, digest: str, body: Iterator[bytes]) -> tuple[int, Any]:
        path = self.store.blob_path(digest)
        if path.exists():
            return 200, None
        h = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(prefix="sha256-", dir=self.store.root / "blobs")
        with os.fdopen(fd, "wb") as fh:
            for chunk in body:
                h.update(chunk)
                fh.write(chunk)
        got = "sha256:" + h.hexdigest()
        real = self.store.blob_path(got)
        if real.exists():
            os.unlink(tmp)
        else:
            os.replace(tmp, real)
            os.chmod(real, 0o644)
        if got != digest:
            raise ApiError(400, f'digest mismatch, expected "{digest}", got "{got}"')
        return 201, None

    def create(self, req: dict) -> Iterator[dict]:
        """POST /api/create (files-based), yielding the stream's JSON objects."""
        files = req.get("files") or {}
        adapters = req.get("adapters") or {}
        if self.today:  # create.go@0029bb5, in its order
            if (req.get("parameters") or {}).get("typical_p") is not None:
                raise ApiError(400, ERR_TYPICAL_P)
            for cap in req.get("capabilities") or []:
                if cap not in CAPABILITIES:
                    raise ApiError(400, f'unknown capability: "{cap}"')
        for rel, digest in files.items():
            if not _fs_valid_path(rel) or (self.today and any(c in rel for c in "\\:")):
                raise ApiError(400, "file path must be relative")
            if not digest:
                raise ApiError(400, "invalid digest format")
        if adapters and self.adapters == "reject":
            raise ApiError(400, "LoRA adapters are no longer supported")
        for digest in adapters.values():
            if not digest:
                raise ApiError(400, "invalid digest format")
        parts = parse_name(req.get("model") or req.get("name") or "")
        if parts is None:
            raise ApiError(400, "invalid model name")
        with self.lock:
            parts = self.store.existing_name(parts)
            old = self.store.read_manifest(parts)
            layers: list[dict] = []
            config: dict[str, Any] = {"model_format": "", "model_family": "", "model_families": None,
                                      "model_type": "", "file_type": ""}
            if not self.config_v2:
                config.update({"architecture": "amd64", "os": "linux"})
            params = dict(req.get("parameters") or {})
            if req.get("from"):  # parseFromModel: the base's layers, by digest, marked with its name
                base_parts = parse_name(req["from"])
                if base_parts is None:
                    yield {"error": "invalid model name", "status": 400}
                    return
                base_parts = self.store.existing_name(base_parts)
                base = self.store.read_manifest(base_parts)
                if base is None:  # Ollama would try to pull it; the double has no registry
                    yield {"error": "pull model manifest: file does not exist"}
                    return
                base_config = json.loads(self.store.blob_path(base["config"]["digest"]).read_bytes())
                if self.today:  # the whole base config (renderer, parser, capabilities, ...) is inherited
                    config.update({k: v for k, v in base_config.items() if k not in ("architecture", "os")})
                for src in base["layers"]:
                    layer = {"mediaType": src["mediaType"], "digest": src["digest"], "size": src["size"],
                             "from": display_shortest(base_parts)}
                    if src.get("name"):
                        layer["name"] = src["name"]
                    layers.append(layer)
                    if src["mediaType"] == MEDIA["model"] and not config["model_format"]:
                        self._describe(config, gguf_info(self.store.blob_path(src["digest"])))
            elif not files:
                yield {"error": "neither 'from' or 'files' was specified", "status": 400}
                return
            else:
                yield {"status": "parsing GGUF"}
            if adapters and self.adapters == "fail":
                yield {"error": "failed to load the adapter: model arch and LoRA arch mismatch"}
                return
            for group, is_adapter in (({} if req.get("from") else files, False), (adapters, True)):
                if is_adapter and len(group) > 1:
                    yield {"error": "only one adapter is currently supported", "status": 400}
                    return
                for rel in sorted(group):
                    digest = group[rel]
                    try:
                        path = self.store.blob_path(digest)
                    except ApiError as exc:
                        yield {"error": exc.message}
                        return
                    if not path.exists():
                        yield {"error": f"open {path}: no such file or directory"}
                        return
                    if path.read_bytes()[:4] != b"GGUF":
                        yield {"error": "supplied file was not in GGUF format", "status": 400}
                        return
                    if is_adapter:
                        yield {"status": "parsing GGUF"}
                    info = gguf_info(path)
                    if self.today and info["kind"] == "adapter":  # ggufLayersWithMediaType, create.go@0029bb5
                        yield {"error": f"LoRA adapters are no longer supported: {rel} is a LoRA adapter",
                               "status": 400}
                        return
                    media = MEDIA["adapter"] if info["kind"] == "adapter" else MEDIA["model"]
                    layer = {"mediaType": media, "digest": digest, "size": path.stat().st_size}
                    if media != MEDIA["model"]:
                        layer["from"] = rel  # HEAD keeps "from" on layers it does not re-encode
                    layers.append(layer)
                    if media == MEDIA["model"]:
                        self._describe(config, info)
                        if self.today and info["architecture"] in AUTO_RENDERERS and not (
                                (req.get("renderer") or config.get("renderer")) and
                                (req.get("parser") or config.get("parser"))):
                            renderer, parser, stop = AUTO_RENDERERS[info["architecture"]]
                            config["renderer"] = req.get("renderer") or config.get("renderer") or renderer
                            config["parser"] = req.get("parser") or config.get("parser") or parser
                            if stop and "stop" not in params:
                                params["stop"] = stop
            if self.today:
                for key in ("renderer", "parser", "requires"):
                    if req.get(key):
                        config[key] = req[key]
                if req.get("capabilities"):
                    config["capabilities"] = list(dict.fromkeys([*(config.get("capabilities") or []),
                                                                 *req["capabilities"]]))
            statuses = [f"using existing layer {layer['digest']}" for layer in layers]

            def set_layer(media: str, layer: dict) -> None:  # removeLayer, then append
                layers[:] = [x for x in layers if x["mediaType"] != media] + [layer]

            if req.get("template"):
                if self.template_check is not None:
                    err = self.template_check(req["template"])
                    if err:
                        yield {"error": f"template error: {err}", "status": 400}
                        return
                set_layer(MEDIA["template"], self.store.new_layer(req["template"].encode(), MEDIA["template"]))
            if req.get("system"):
                set_layer(MEDIA["system"], self.store.new_layer(req["system"].encode(), MEDIA["system"]))
            lic = req.get("license")
            for text in ([lic] if isinstance(lic, str) and lic else lic if isinstance(lic, list) else []):
                layers.append(self.store.new_layer(text.encode(), MEDIA["license"]))
            for layer in [x for x in layers if x["mediaType"] == MEDIA["params"]]:  # setParameters keeps the rest
                for k, v in json.loads(self.store.blob_path(layer["digest"]).read_bytes()).items():
                    params.setdefault(k, v)
            params = _go_decoded(params)
            if params:
                set_layer(MEDIA["params"], self.store.new_layer((go_json(params, sort_keys=True) + "\n").encode(),
                                                                MEDIA["params"]))
            msgs = req.get("messages") or []
            if msgs:
                encoded = [{"role": str(m.get("role", "")).lower(), "content": m.get("content", "")} for m in msgs]
                set_layer(MEDIA["messages"], self.store.new_layer((go_json(encoded) + "\n").encode(),
                                                                  MEDIA["messages"]))
            cfg = ({k: config.get(k, "") for k, omit in CONFIG_V2 if not (omit and not config.get(k))}
                   if self.config_v2 else dict(config))
            cfg_layer = self.store.new_layer((go_json(cfg) + "\n").encode(), CONFIG_MEDIA)
            for layer in layers:
                statuses.append(layer.pop("_status", None) or "")
            cfg_layer.pop("_status")
            for s in statuses:
                if s:
                    yield {"status": s}
            yield {"status": "writing manifest"}
            self.store.write_manifest(parts, cfg_layer, layers)
            if old is not None:
                self.store.remove_layers(old)
        yield {"status": "success"}

    @staticmethod
    def _describe(config: dict, info: dict) -> None:
        """createModel's config fields for a model layer (the first one wins)."""
        config["model_format"] = config["model_format"] or "gguf"
        config["model_family"] = config["model_family"] or info["architecture"]
        config["model_type"] = config["model_type"] or human_number(info["parameter_count"])
        config["file_type"] = config["file_type"] or info["file_type"]
        config["model_families"] = (config["model_families"] or []) + [info["architecture"]]

    def tags(self) -> dict:
        models = []
        for parts, path in self.store.manifests().items():
            raw = path.read_bytes()
            m = json.loads(raw)
            cfg = json.loads(self.store.blob_path(m["config"]["digest"]).read_bytes())
            size = sum(layer["size"] for layer in m["layers"]) + m["config"]["size"]
            mtime = _dt.datetime.fromtimestamp(path.stat().st_mtime).astimezone().isoformat()
            name = display_shortest(parts)
            models.append({"name": name, "model": name, "modified_at": mtime, "size": size,
                           "digest": hashlib.sha256(raw).hexdigest(),
                           "details": {"parent_model": "", "format": cfg.get("model_format", ""),
                                       "family": cfg.get("model_family", ""),
                                       "families": cfg.get("model_families"),
                                       "parameter_size": cfg.get("model_type", ""),
                                       "quantization_level": cfg.get("file_type", "")}})
        models.sort(key=lambda m: m["modified_at"], reverse=True)
        return {"models": models}

    def _load(self, name: str) -> tuple[tuple, dict, dict[str, Any]]:
        parts = parse_name(name)
        if parts is None:
            raise ApiError(400, "invalid model name")
        parts = self.store.existing_name(parts)
        m = self.store.read_manifest(parts)
        if m is None:
            raise ApiError(404, f"model '{name}' not found")
        out: dict[str, Any] = {"messages": [], "license": [], "params": {}, "template": "{{ .Prompt }}",
                               "system": "", "model_path": None, "adapter_path": None, "has_template": False,
                               "chat_template": "", "name": display_shortest(parts),
                               "config": json.loads(self.store.blob_path(m["config"]["digest"]).read_bytes())}
        for layer in m["layers"]:
            blob = self.store.blob_path(layer["digest"])
            mt = layer["mediaType"]
            if mt == MEDIA["model"]:
                out["model_path"] = blob
                out["chat_template"] = gguf_info(blob).get("chat_template") or ""
            elif mt == MEDIA["adapter"]:
                out["adapter_path"] = blob
            elif mt == MEDIA["template"]:
                out["template"] = blob.read_text()
                out["has_template"] = True
            elif mt == MEDIA["system"]:
                out["system"] = blob.read_text()
            elif mt == MEDIA["params"]:
                out["params"] = json.loads(blob.read_bytes())
            elif mt == MEDIA["messages"]:
                out["messages"] = json.loads(blob.read_bytes())
            elif mt == MEDIA["license"]:
                out["license"].append(blob.read_text())
        return parts, m, out

    def show(self, req: dict) -> dict:
        name = req.get("model") or req.get("name")
        if not name:
            raise ApiError(400, "model is required")
        parts, m, model = self._load(name)
        cfg = json.loads(self.store.blob_path(m["config"]["digest"]).read_bytes())
        params_text = "".join(f"{k:<30} {json.dumps(x) if isinstance(x, str) else x}\n"
                              for k, v in sorted(model["params"].items())
                              for x in (v if isinstance(v, list) else [v]))
        resp = {"license": "\n".join(model["license"]), "parameters": params_text, "template": model["template"],
                "system": model["system"],
                "details": {"parent_model": "", "format": cfg.get("model_format", ""),
                            "family": cfg.get("model_family", ""), "families": cfg.get("model_families"),
                            "parameter_size": cfg.get("model_type", ""),
                            "quantization_level": cfg.get("file_type", "")},
                "model_info": {}, "modified_at": _dt.datetime.fromtimestamp(
                    self.store.manifest_path(parts).stat().st_mtime).astimezone().isoformat()}
        if model["messages"]:
            resp["messages"] = model["messages"]
        resp["modelfile"] = f"# Modelfile generated by the Ollama double\nFROM {model['model_path']}\n"
        for key in ("renderer", "parser"):  # Model.String() writes them; /api/show fills no field (fb30760)
            if cfg.get(key):
                resp["modelfile"] += f"{key.upper()} {cfg[key]}\n"
        if self.today and self._path(model) == "jinja" and model["chat_template"]:
            resp["template"] = model["chat_template"]  # selectedModelTemplate, routes.go@fb30760
        if model["adapter_path"] is not None:
            resp["modelfile"] += f"ADAPTER {model['adapter_path']}\n"
        return resp

    def delete(self, req: dict) -> None:
        name = req.get("model") or req.get("name") or ""
        parts = parse_name(name)
        if parts is None:
            raise ApiError(400, f'name "{name}" is invalid')
        with self.lock:
            parts = self.store.existing_name(parts)
            m = self.store.read_manifest(parts)
            if m is None:
                raise ApiError(404, f"model '{name}' not found")
            self.store.manifest_path(parts).unlink()
            self.store.prune_dirs()
            self.store.remove_layers(m)

    def chat(self, req: dict) -> Iterator[dict]:
        name = req.get("model") or ""
        if not name:
            raise ApiError(400, "model is required")
        _, _, model = self._load(name)
        req_msgs = [{"role": str(x.get("role", "")).lower(), "content": x.get("content", "")}
                    for x in req.get("messages") or []]
        created = _dt.datetime.now(_dt.timezone.utc).isoformat()
        if not req_msgs:
            yield {"model": name, "created_at": created, "message": {"role": "assistant", "content": ""},
                   "done": True, "done_reason": "load"}
            return
        msgs = list(model["messages"]) + req_msgs
        if req_msgs[0]["role"] != "system" and model["system"]:
            msgs = [{"role": "system", "content": model["system"]}] + msgs
        if self.generator is None:
            raise ApiError(500, "the double was started without a generator for /api/chat")
        think = req.get("think")
        if think is None and self.today and self._can_think(model):
            think = True  # ChatHandler, server/routes.go@e0c95a5
        path, prompt = self._prompt(model, msgs, think)
        options = {**model["params"], **(req.get("options") or {})}
        stop = options.pop("stop", [])
        reason = "stop"
        for piece in self.generator(model["model_path"], prompt, list(stop), options, model["adapter_path"]):
            if isinstance(piece, tuple):  # (text, finish reason) from generators that report it
                piece, finish = piece
                reason = "length" if finish == "length" else reason
            if piece:
                yield {"model": name, "created_at": created, "message": {"role": "assistant", "content": piece},
                       "done": False}
        yield {"model": name, "created_at": created, "message": {"role": "assistant", "content": ""},
               "done": True, "done_reason": reason, "prompt": prompt, "prompt_path": path}

    # -- which prompt path serves a model (server/routes.go@fb30760 chatModeForModel,
    #    server/images.go@fb30760 GetModel / shouldPreferChatTemplate) ---------------------------
    def _can_think(self, model: dict) -> bool:
        cfg = model["config"]
        if cfg.get("parser") in THINKING_PARSERS or "thinking" in (cfg.get("capabilities") or []):
            return True
        path = self._path(model)
        if path == "template":
            return _go_caps(model["template"]).count("thinking") > 0
        return path == "jinja" and "thinking" in _jinja_caps(model["chat_template"])

    def _path(self, model: dict) -> str:
        cfg = model["config"]
        if not self.today:
            return "template"
        if cfg.get("renderer"):
            return "renderer"
        if cfg.get("parser"):
            return "template"  # rendered in Go with the TEMPLATE (usesOllamaRenderedChat)
        if model["has_template"]:
            env = self.go_template_env
            if env is not None:  # goTemplateEnvSet: the variable decides
                if env.strip().lower() in ("1", "t", "true"):
                    return "template"
                if env.strip().lower() in ("0", "f", "false"):
                    return "jinja"
                return "template"  # unparsable: the default (true)
            if not (model["chat_template"] and _prefer_chat_template(model["chat_template"], model["template"])):
                return "template"
        return "jinja"

    def _prompt(self, model: dict, msgs: list[dict], think: Any) -> tuple[str, str]:
        from ftpack.ollama import renderers

        path = self._path(model)
        cfg = model["config"]
        if path == "renderer":
            name = renderers.resolve_name(cfg["renderer"], model_name=model["name"], model_type=cfg.get("model_type", ""))
            prompt = renderers.render(name, msgs, think)
            # llm/llama_server.go@f427fa0 completionPrompt: a textual BOS goes when the tokenizer adds one
            # (forced for gemma4); the generator adds BOS from the GGUF.
            for lead in (renderers.LEADING_BOS.get(name), "<bos>"):
                if lead and prompt.startswith(lead):
                    prompt = prompt[len(lead):]
                    break
            return path, prompt
        if path == "template":
            if self.renderer is None:
                raise ApiError(500, "the double was started without a Go TEMPLATE renderer for /api/chat")
            return path, self.renderer(model["template"], msgs)
        if self.jinja_renderer is None:
            raise ApiError(500, "the double was started without a Jinja renderer for /api/chat")
        return path, self.jinja_renderer(model["chat_template"] or "", msgs, think)


# The capability rules below are written again, from Ollama's source, apart from
# ftpack.ollama.prompt_path on purpose: the double must not share the code it tests.
def _go_caps(template: str) -> list[str]:
    """goTemplateCapabilities (images.go@fb30760), from the template text: ``.Tools`` → tools,
    ``.Suffix`` → insert, ``.Thinking`` (inside ``range .Messages``) → thinking."""
    low = template.lower()
    caps = [c for c, var in (("tools", ".tools"), ("insert", ".suffix")) if var in low]
    if ".thinking" in low and "range" in low and ".messages" in low:
        caps.append("thinking")
    return caps


def _jinja_caps(chat_template: str) -> list[str]:
    """chatTemplateCapabilities (images.go@fb30760): plain substring tests."""
    caps = []
    if "tools" in chat_template or "tool_call" in chat_template:
        caps.append("tools")
    split = "content.split('</think>')" in chat_template or 'content.split("</think>")' in chat_template
    if ("<think>" in chat_template and "</think>" in chat_template) or (
            split and "reasoning_content" not in chat_template and "<SPECIAL_12>" not in chat_template):
        caps.append("thinking")
    return caps


def _jinja_round_trip(t: str) -> bool:
    if "tools" not in t and "tool_call" not in t:
        return False
    calls = "tool_calls" in t or "assistant_tool_call" in t
    return calls and any(x in t for x in ("tool_response", "tool_results", "role'] == 'tool'", "role'] == \"tool\"",
                                          "role\"] == 'tool'", "role\"] == \"tool\"", "message.role == 'tool'",
                                          "message.role == \"tool\"", "ipython"))


def _go_round_trip(t: str) -> bool:
    low = t.lower()
    return ".tools" in low and ".toolcalls" in low and (
        'eq .Role "tool"' in t or "tool_response" in t or "TOOL_RESULTS" in t)


def _prefer_chat_template(chat_template: str, go_template: str) -> bool:
    """shouldPreferChatTemplate (images.go@fb30760): more capabilities by count, with the
    tool-round-trip tie-breaks."""
    jc, gc = _jinja_caps(chat_template), _go_caps(go_template)
    if len(jc) > len(gc):
        return not _go_round_trip(go_template) or _jinja_round_trip(chat_template)
    if sorted(jc) != sorted(gc) or "tools" not in jc or "tools" not in gc:
        return False
    return _jinja_round_trip(chat_template) and not _go_round_trip(go_template)


def _go_decoded(v: Any) -> Any:
    """A JSON value as Go's map[string]any decoding sees it (every number is a float64)."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, list):
        return [_go_decoded(x) for x in v]
    if isinstance(v, dict):
        return {k: _go_decoded(x) for k, x in v.items()}
    return v


def _fs_valid_path(name: str) -> bool:
    """io/fs.ValidPath."""
    if name == ".":
        return True
    return all(elem not in ("", ".", "..") for elem in name.split("/"))


class _Handler(BaseHTTPRequestHandler):
    owner: OllamaDouble
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, obj: Any = None, *, content_type: str = "application/json") -> None:
        body = b"" if obj is None else (json.dumps(obj) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _stream(self, it: Iterator[dict]) -> None:
        first = next(it, None)
        if first is not None and "error" in first:
            self._send(first.get("status", 500), {"error": first["error"]})
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def write(obj: dict) -> None:
            data = (json.dumps({k: v for k, v in obj.items() if not (k == "status" and "error" in obj)}) + "\n").encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        try:
            if first is not None:
                write(first)
            for obj in it:
                write(obj)
                if "error" in obj:
                    break
        except ApiError as exc:
            write({"error": exc.message})
        self.wfile.write(b"0\r\n\r\n")

    def _json_body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if not raw:
            raise ApiError(400, "missing request body")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        if not isinstance(body, dict):
            raise ApiError(400, "json: cannot unmarshal into Go value")
        return body

    def _body_chunks(self) -> Iterator[bytes]:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return
                yield self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        while n > 0:
            chunk = self.rfile.read(min(n, 1 << 20))
            if not chunk:
                return
            n -= len(chunk)
            yield chunk

    def _dispatch(self) -> None:
        o = self.owner
        path = self.path.split("?", 1)[0]
        o.requests.append((self.command, path))
        try:
            m = re.fullmatch(r"/api/blobs/([^/]+)", path)
            if path == "/api/version" and self.command in ("GET", "HEAD"):
                return self._send(200, {"version": o.version})
            if path == "/" and self.command in ("GET", "HEAD"):
                body = b"Ollama is running"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(body)
                return None
            if m and self.command == "HEAD":
                status, _ = o.head_blob(m.group(1))
                return self._send(status)
            if m and self.command == "POST":
                chunks = self._body_chunks()
                try:
                    status, _ = o.create_blob(m.group(1), chunks)
                finally:
                    for _ in chunks:  # drain what was not read (e.g. an existing blob)
                        pass
                return self._send(status)
            if path == "/api/create" and self.command == "POST":
                req = self._json_body()
                if _version_tuple(o.version) < (0, 5, 5):
                    raise ApiError(400, "path or Modelfile are required")
                if req.get("stream") is False:
                    latest: dict = {}
                    for obj in o.create(req):
                        if "error" in obj:
                            raise ApiError(obj.get("status", 500), obj["error"])
                        latest = obj
                    return self._send(200, latest)
                return self._stream(o.create(req))
            if path == "/api/tags" and self.command in ("GET", "HEAD"):
                return self._send(200, o.tags())
            if path == "/api/show" and self.command == "POST":
                return self._send(200, o.show(self._json_body()))
            if path == "/api/delete" and self.command == "DELETE":
                o.delete(self._json_body())
                return self._send(200)
            if path == "/api/chat" and self.command == "POST":
                req = self._json_body()
                if req.get("stream") is False:
                    content, last = [], {}
                    for obj in o.chat(req):
                        content.append(obj["message"]["content"])
                        last = obj
                    last["message"] = {"role": "assistant", "content": "".join(content)}
                    return self._send(200, last)
                return self._stream(o.chat(req))
            return self._send(404, None, content_type="text/plain")
        except ApiError as exc:
            return self._send(exc.status, {"error": exc.message})

    do_GET = do_POST = do_HEAD = do_DELETE = _dispatch


def _version_tuple(v: str) -> tuple[int, ...]:
    nums = re.findall(r"\d+", v.split("-")[0])
    return tuple(int(x) for x in nums[:3])


def copy_store(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)
