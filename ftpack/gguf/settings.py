"""The GGUF side's checks at config load: ``--quant``, ``--imatrix``, ``--ship`` and whether
the base's architecture can become a GGUF llama.cpp runs.

Each is a check of :data:`CHECKS` (``check(value, all values, label) -> normalised value``),
run by :func:`ftpack.core.checks.run_checks` when :mod:`ftpack.settings` loads a config, so
a typo or an unconvertible base fails in a second (exit 2), never after training. Nothing
heavy is imported until a check needs it, and torch never.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from ftpack.core.checks import Check
from ftpack.core.errors import FtpackError, bad_input


def _check_quant(value: str, values: Mapping[str, Any], label: str) -> str:
    """A type llama.cpp's quantizer offers (any case) or ``auto``; the IQ1/IQ2/IQ3 types
    (and Q2_K_S) are refused with ``--imatrix none``."""
    from ftpack.gguf.quantize import NEEDS_IMATRIX, resolve_quant_type

    if value.strip().lower() == "auto":
        return "auto"
    try:
        name, _ = resolve_quant_type(value)
    except FtpackError as exc:
        raise bad_input(f"{label}: {exc.message}", exc.hint) from None
    if name in NEEDS_IMATRIX and values.get("imatrix") == "none":
        raise bad_input(f"{label}: {name} needs an importance matrix, and --imatrix is none; without one the "
                        "model degrades badly.", "Use --imatrix auto (a build computes one from your data) or a file "
                        "from `ftpack imatrix`, or pick Q4_K_M / Q5_K_M / Q6_K.")
    return name


def _check_imatrix(value: str, values: Mapping[str, Any], label: str) -> str:
    """``auto``, ``none`` (any case) or an existing file, made absolute."""
    if str(value).strip().lower() in ("auto", "none"):
        return str(value).strip().lower()
    path = Path(value).expanduser()
    if not path.is_file():
        raise bad_input(f"{label}: file not found: {value}", "Give an importance matrix file, or auto / none.")
    return str(path.absolute())


def _check_base(value: str, values: Mapping[str, Any], label: str) -> str:
    """A base whose architecture can be trained and become a GGUF llama.cpp runs, decided
    before training (exit 2 in seconds otherwise).

    A Hugging Face folder, alias or hub id: its config.json's architecture (fetched alone
    from the hub when not at hand); a ``.gguf`` file or an ``ollama:`` model's blob: its
    header's architecture, which transformers must dequantize and the converter bring back.
    For an architecture outside ftpack's own converter this fetches llama.cpp's converter
    (once per llama-cpp-python version): better here than after training. When the hub or
    the Ollama model is not reachable yet, the check is deferred to the data stage, which
    fails before training (its vocab-only conversion) and says so.
    """
    from ftpack.ollama.base import is_ollama_base

    if is_ollama_base(value):
        blob = _ollama_blob(value, values.get("models_dir"))
        if blob is None:
            _deferred(value, "the model is not in the local Ollama store yet")
        else:
            _check_gguf_base(blob, value, label)
        return value
    path = Path(value).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        _check_gguf_base(path, value, label)
        return value
    config = base_config_json(value)
    if config is None:
        hub_id = _hub_id(value)
        if hub_id is None:
            return value
        config, why = hub_config_json(hub_id)
        if config is None:
            _deferred(value, why)
            return value
    from ftpack.gguf.vendored import conversion_route

    route, reason = conversion_route(config)
    if route is None:
        raise bad_input(f"{label}: {value}: {reason}", "Pick a base of an architecture llama.cpp supports.")
    return value


def _check_gguf_base(path: Path, value: str, label: str) -> None:
    """A GGUF base: a model (not an adapter) that transformers dequantizes into an
    architecture ftpack's converters turn back into a GGUF."""
    from ftpack.gguf.header import read_gguf_header
    from ftpack.gguf.vendored import gguf_base_route

    shown = value if str(path) == value else f"{value} ({path})"
    try:
        if read_gguf_header(path).get("general.type", "STRING") == "adapter":
            raise bad_input(f"{label}: {shown} is a LoRA adapter GGUF, not a base model.",
                            "Give the base model the adapter was trained on.")
        route, reason = gguf_base_route(path)
    except FtpackError as exc:
        if exc.code == 2:
            raise
        raise bad_input(f"{label}: {exc.message}", exc.hint) from None
    if route is None:
        raise bad_input(f"{label}: {shown}: {reason}",
                        "Pick a base of an architecture both transformers (GGUF loading) and llama.cpp support, "
                        "or train from the model's Hugging Face original (--base ORG/NAME).")


def _ollama_blob(value: str, models_dir: Any) -> Path | None:
    """The GGUF blob of an ``ollama:NAME`` base in the local store, without asking a server;
    None when it is not there (to be pulled, or only a server knows it: the data stage reads it)."""
    from ftpack.core.locations import ollama_models_dir
    from ftpack.ollama.base import MEDIA_MODEL, PREFIX
    from ftpack.ollama.names import parse_model_name
    from ftpack.ollama.store import blob_path, find_store_model

    ref = value.strip()[len(PREFIX):].strip()
    if not ref:
        return None  # resolve_base says what is missing
    try:
        name = parse_model_name(ref)
        store = Path(models_dir).expanduser() if models_dir else ollama_models_dir()
        model = find_store_model(store, name) if store.is_dir() else None
        layer = model.layer(MEDIA_MODEL) if model is not None else None
        blob = blob_path(store, str(layer.get("digest", ""))) if layer is not None else None
    except (FtpackError, OSError):
        return None  # a bad name or store: the data stage explains it
    if blob is None:
        return None
    try:
        with open(blob, "rb") as fh:
            return blob if fh.read(4) == b"GGUF" else None
    except OSError:  # missing or unreadable: the data stage explains it
        return None


def _deferred(value: str, why: str) -> None:
    from ftpack.core.report import get_reporter

    get_reporter().info(f"Architecture check for {value} deferred to the data stage ({why}); it runs there, "
                        "before any training.", deferred=True)


def _check_ship(value: str, values: Mapping[str, Any], label: str) -> str:
    """``--ship adapter`` needs weights llama.cpp's LoRA GGUF can carry: refused before training otherwise."""
    if value != "adapter":
        return value
    if values.get("dora"):
        raise bad_input(f"{label}: adapter with --dora: llama.cpp's LoRA adapter format has no place for DoRA's "
                        "learned magnitudes, so a DoRA adapter cannot be shipped on its own.",
                        "Drop --dora (plain LoRA), or use --ship merged (the adapter fused into one GGUF).")
    if values.get("method") in ("sft", "full"):
        raise bad_input(f"{label}: adapter with --method {values['method']}: that method trains the weights "
                        "themselves, so there is no adapter to ship.",
                        "Use --method lora or qlora, or --ship merged.")
    return value


#: key -> check of the settings the GGUF side owns (--quant reads --imatrix, normalised first).
CHECKS: dict[str, Check] = {
    "imatrix": _check_imatrix, "quant": _check_quant, "base": _check_base, "ship": _check_ship,
}


# -- a base's config.json, without downloading the model -------------------------------------

def base_config_json(base: str) -> dict[str, Any] | None:
    """The config.json of a base, when it is on disk without downloading anything.

    A local Hugging Face folder, or an alias / hub id already in the Hugging Face cache.
    None for GGUF files, the embedded default and hub ids not downloaded yet (for those,
    :func:`hub_config_json`).
    """
    path = Path(base).expanduser()
    if path.is_dir():
        return _read_json(path / "config.json")
    if path.exists():
        return None
    hub_id = _hub_id(base)
    if hub_id is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    from ftpack.core.locations import hf_hub_cache

    try:
        cached = try_to_load_from_cache(hub_id, "config.json", cache_dir=hf_hub_cache())
    except ValueError:  # not a valid repo id: resolve_base explains later
        return None
    return _read_json(Path(cached)) if isinstance(cached, str) else None


def _hub_id(base: str) -> str | None:
    """The hub id an alias or ``org/name`` stands for; None for the embedded default and anything else."""
    from ftpack.training.bases import _HUB_ID_RE, ALIASES, EMBEDDED_NAME

    key = base.strip().lower()
    if key == EMBEDDED_NAME or base.strip().startswith((".", "/", "~")):
        return None
    hub_id = ALIASES.get(key, base.strip())
    return hub_id if _HUB_ID_RE.match(hub_id) else None


#: seconds to wait for the hub when fetching a config.json at config load
HUB_CONFIG_TIMEOUT_S = 5.0


def hub_config_json(hub_id: str, timeout_s: float = HUB_CONFIG_TIMEOUT_S) -> tuple[dict[str, Any] | None, str]:
    """``(config.json, "")`` fetched alone from the hub (a few KB, into the HF cache, where the
    later snapshot finds it), or ``(None, why)`` when the hub cannot say now (offline,
    gated): the data stage decides then. A repo the hub does not have is a user error, and so
    is a hub that does not answer one quick request (:func:`ftpack.core.hub.probe_hub`), the
    model not being in the cache either.
    """
    import huggingface_hub
    from huggingface_hub import errors as hf_errors

    from ftpack.core.locations import hf_hub_cache

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return None, f"the Hugging Face hub is offline ({name}=1)"
    from ftpack.core.hub import probe_hub, unreachable_error
    from ftpack.training.embedded import EMBEDDED_NAME

    unreachable = probe_hub()  # one quick request: huggingface_hub would retry for ~25 s, logging each try
    if unreachable is not None:  # and the model is not cached (base_config_json looked): nothing could train
        raise unreachable_error(hub_id, unreachable, offline_base=EMBEDDED_NAME) from unreachable
    try:
        cached = huggingface_hub.hf_hub_download(hub_id, "config.json", cache_dir=hf_hub_cache(),
                                                 etag_timeout=timeout_s,
                                                 endpoint=os.environ.get("HF_ENDPOINT") or None)
    except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled) as exc:  # no connection
        return None, f"the Hugging Face hub is unreachable ({_first_line(exc)})"
    except hf_errors.GatedRepoError:
        return None, f"{hub_id} is gated on the hub"
    except hf_errors.RepositoryNotFoundError:
        from ftpack.training.bases import aliases_text

        raise bad_input(f"Base model {hub_id!r} does not exist on the Hugging Face hub (or is private).",
                        f"Aliases: {aliases_text()}.") from None
    except hf_errors.EntryNotFoundError:
        return None, f"{hub_id} has no config.json on the hub"
    except Exception as exc:  # timeouts, HTTP errors: httpx/requests errors are not all OSError
        return None, f"the Hugging Face hub is unreachable ({_first_line(exc)})"
    config = _read_json(Path(cached))
    return (config, "") if config is not None else (None, f"{hub_id}'s config.json is not valid JSON")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # missing or damaged: resolve_base says what is wrong
    return data if isinstance(data, dict) else None
