"""llama.cpp's own converter, taken from the llama-cpp-python source distribution.

Why: ftpack's streaming converter (``ftpack.gguf.convert``) covers the llama family; every
other architecture needs llama.cpp's ``convert_hf_to_gguf.py``, which no package
installs. But llama-cpp-python exists only as a source distribution, which pip has
already downloaded to build it, and that sdist vendors llama.cpp — the converter scripts,
the ``conversion/`` package they import, the ``gguf-py`` that matches them, and
``models/ggml-vocab-*.gguf`` vocab files with llama.cpp's tokenizer tests
(``.inp``/``.out``), and ``models/templates/*.jinja``, real models' chat templates. Taking them from the sdist of the *installed* version means the
converter, the quantizer and the runtime are one llama.cpp commit: no clone, no version
skew with the ``gguf`` package on PyPI.

What happens:

- :func:`vendored_source` fetches ``llama-cpp-python==<installed version>`` with
  ``pip download --no-binary :all:`` (usually from pip's cache), checks its sha256 when the
  version is one ftpack knows, extracts only the files above into
  ``<ftpack cache>/llama.cpp/<version>/`` under a temporary name, records every file's
  size and sha256 plus the parsed architecture lists in ``ftpack-vendored.json``, and
  renames the folder into place. Later calls reuse it without touching pip.
- ``--llama-cpp DIR`` / ``LLAMA_CPP_DIR`` (a llama.cpp checkout) still override it:
  :func:`llama_cpp_source`.
- :func:`run_converter` runs the script in a subprocess with *its* ``gguf-py`` first on
  ``PYTHONPATH`` (never installed into site-packages); a failure becomes an
  :class:`FtpackError` carrying the converter's last lines.
- :func:`parse_converter_architectures` lists the Hugging Face architectures the script
  registers (``@ModelBase.register(...)``, read as text with ``ast``, nothing imported),
  with the llama.cpp architecture each writes; :func:`conversion_route` decides, from a
  config.json alone, whether a model goes to ftpack's converter, llama.cpp's, or neither.

Which architectures the installed llama.cpp can *run* is approximated by the
``MODEL_ARCH_NAMES`` of the vendored gguf-py (same llama.cpp commit as the compiled
library); the C++ ``LLM_ARCH`` table is not readable from Python.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator, Mapping

from ftpack.core.atomic import partial_name, sha256_file
from ftpack.core.errors import FtpackError, bad_input
from ftpack.core.locations import cache_dir
from ftpack.core.report import get_reporter

PACKAGE = "llama-cpp-python"
#: sha256 of the sdist as PyPI serves it, for versions ftpack was checked against. Other
#: versions rely on pip's own check of the index's hash.
KNOWN_SDIST_SHA256 = {
    "0.3.36": "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
}
#: Where llama.cpp sits inside the sdist (after its top folder).
VENDOR_PREFIX = "vendor/llama.cpp/"
MANIFEST = "ftpack-vendored.json"
CONVERT_SCRIPT = "convert_hf_to_gguf.py"
LORA_SCRIPT = "convert_lora_to_gguf.py"
#: Files a usable copy must have (relative to the llama.cpp root).
REQUIRED_FILES = (CONVERT_SCRIPT, LORA_SCRIPT, "gguf-py/gguf/__init__.py", "gguf-py/gguf/constants.py")
#: llama.cpp's MODEL_ARCH for vision/audio projectors: never a text model.
_MMPROJ = "MMPROJ"
_MANIFEST_FORMAT = 2  # 2: models/templates/*.jinja (real chat templates) are extracted too
_DOWNLOAD_PREFIX = "ftpack-llama-cpp-sdist-"


def _wanted(rel: str) -> bool:
    """The parts of llama.cpp the converter and the tokenizer tests need."""
    return (rel in (CONVERT_SCRIPT, LORA_SCRIPT, "LICENSE", "gguf-py/LICENSE")
            or rel.startswith(("conversion/", "gguf-py/gguf/", "models/ggml-vocab-",
                               "requirements/requirements-convert"))
            or (rel.startswith("models/templates/") and rel.endswith(".jinja")))


# -- where the converter comes from ---------------------------------------------------------

@dataclass(frozen=True)
class LlamaCppSource:
    """A llama.cpp tree holding convert_hf_to_gguf.py: the vendored copy or a user checkout."""

    root: Path
    origin: str  # for messages: "llama-cpp-python 0.3.36 sdist" or "checkout /path"
    version: str | None = None  # llama-cpp-python version of a vendored copy
    commit: str | None = None  # llama.cpp commit, when the sdist records it

    @property
    def convert_script(self) -> Path:
        return self.root / CONVERT_SCRIPT

    @property
    def lora_script(self) -> Path:
        return self.root / LORA_SCRIPT

    @property
    def gguf_py(self) -> Path:
        return self.root / "gguf-py"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def vocab_tests(self) -> dict[str, tuple[Path, Path, Path]]:
        """llama.cpp's tokenizer tests: name -> (vocab .gguf, .inp, .out), e.g. ``llama-spm``."""
        out = {}
        for inp in sorted(self.models_dir.glob("ggml-vocab-*.gguf.inp")):
            vocab = inp.with_suffix("")
            expected = vocab.with_name(vocab.name + ".out")
            if vocab.is_file() and expected.is_file():
                out[vocab.name[len("ggml-vocab-"):-len(".gguf")]] = (vocab, inp, expected)
        return out

    def chat_templates(self) -> dict[str, Path]:
        """Real models' Jinja chat templates llama.cpp tests with (``models/templates/``):
        file stem (``Qwen3.5-4B``, ``google-gemma-4-31B-it``, …) -> file."""
        return {p.stem: p for p in sorted((self.models_dir / "templates").glob("*.jinja"))}

    def subprocess_env(self) -> dict[str, str]:
        """The environment for its scripts: its gguf-py first, so PyPI's gguf is never used."""
        env = dict(os.environ)
        paths = [str(self.gguf_py)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env.pop("NO_LOCAL_GGUF", None)  # the script would then skip its own gguf-py
        return env


def installed_version() -> str:
    """The installed llama-cpp-python's version: the sdist to take the converter from."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        raise FtpackError("llama-cpp-python is not installed; its source distribution provides llama.cpp's "
                          "converter for architectures outside the llama family.",
                          "pip install llama-cpp-python") from None


def vendored_root(version: str | None = None) -> Path:
    """``<ftpack cache>/llama.cpp/<version>``: one folder per llama-cpp-python version."""
    return cache_dir() / "llama.cpp" / (version or installed_version())


def llama_cpp_source(override: Path | str | None = None, *, download: bool = True) -> LlamaCppSource:
    """The converter to use: ``override`` / ``LLAMA_CPP_DIR`` when given, else the vendored copy."""
    candidate = override or os.environ.get("LLAMA_CPP_DIR")
    if candidate:
        folder = Path(candidate).expanduser()
        if not (folder / CONVERT_SCRIPT).is_file():
            raise bad_input(f"{folder} has no {CONVERT_SCRIPT}.",
                            "Point --llama-cpp (or LLAMA_CPP_DIR) at a llama.cpp checkout, or leave it unset to "
                            "use the converter of the installed llama-cpp-python.")
        return LlamaCppSource(folder.resolve(), f"checkout {folder}")
    return vendored_source(download=download)


def vendored_source(version: str | None = None, *, download: bool = True,
                    pip: list[str] | None = None) -> LlamaCppSource:
    """The vendored llama.cpp of llama-cpp-python ``version`` (default: the installed one).

    Reused from the cache when complete; otherwise fetched with pip and extracted (with
    ``download=False`` a missing copy is an error instead).
    """
    version = version or installed_version()
    root = vendored_root(version)
    manifest = read_manifest(root)
    if manifest is not None and manifest.get("version") == version and _files_present(root, manifest):
        return _source_from_manifest(root, manifest)
    if not download:
        raise FtpackError(f"llama.cpp's converter for llama-cpp-python {version} is not in {root.parent} yet.",
                          "Run `ftpack convert` (or any build) once with network or pip cache access.")
    return fetch_vendored(version, pip=pip)


def read_manifest(root: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == _MANIFEST_FORMAT else None


def _files_present(root: Path, manifest: Mapping[str, Any]) -> bool:
    files = manifest.get("files") or {}
    if any(rel not in files for rel in REQUIRED_FILES):
        return False
    for rel, (size, _digest) in files.items():
        p = root / rel
        try:
            if p.stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def _source_from_manifest(root: Path, manifest: Mapping[str, Any]) -> LlamaCppSource:
    version = manifest["version"]
    return LlamaCppSource(root, f"llama-cpp-python {version} sdist", version, manifest.get("llama_cpp_commit"))


def verify_vendored(root: Path) -> int:
    """Re-hash every extracted file against the manifest; returns how many were checked."""
    manifest = read_manifest(root)
    if manifest is None:
        raise FtpackError(f"{root} has no valid {MANIFEST}.", f"Delete {root}; ftpack fetches it again.")
    for rel, (size, digest) in manifest["files"].items():
        p = root / rel
        if not p.is_file() or p.stat().st_size != size or sha256_file(p) != digest:
            raise FtpackError(f"{p} differs from the copy ftpack extracted.",
                              f"Delete {root}; ftpack fetches it again.")
    return len(manifest["files"])


# -- fetching and extracting the sdist ---------------------------------------------------------

def fetch_vendored(version: str, *, pip: list[str] | None = None) -> LlamaCppSource:
    """Download the sdist of ``llama-cpp-python==version`` with pip and extract llama.cpp's converter."""
    reporter = get_reporter()
    root = vendored_root(version)
    root.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_work(root.parent)
    with tempfile.TemporaryDirectory(prefix=f"{_DOWNLOAD_PREFIX}{os.getpid()}-", dir=root.parent) as tmp:
        sdist = download_sdist(version, Path(tmp), pip=pip)
        digest = sha256_file(sdist)
        expected = KNOWN_SDIST_SHA256.get(version)
        if expected is not None and digest != expected:
            raise FtpackError(f"{sdist.name} does not have the sha256 ftpack expects for {PACKAGE} {version} "
                              f"({digest}); refusing to run code from it.",
                              "Clear pip's cache (pip cache purge) and try again.")
        staging = partial_name(root)
        shutil.rmtree(staging, ignore_errors=True)
        try:
            manifest = extract_sdist(sdist, staging, version)
            manifest["sdist"] = {"name": sdist.name, "sha256": digest, "pinned": expected is not None}
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            _install_dir(staging, root, version)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    manifest = read_manifest(root)
    if manifest is None or not _files_present(root, manifest):  # pragma: no cover - a concurrent writer broke it
        raise FtpackError(f"{root} is incomplete after extraction.", f"Delete {root} and try again.")
    reporter.info(f"llama.cpp's converter (llama-cpp-python {version}, llama.cpp "
                  f"{(manifest.get('llama_cpp_commit') or '?')[:10]}) is in {root}")
    return _source_from_manifest(root, manifest)


def remove_stale_work(folder: Path) -> list[Path]:
    """Remove download and extraction folders of fetches whose process is gone (killed mid-way)."""
    removed = []
    for p in folder.iterdir() if folder.is_dir() else ():
        m = re.search(r"\.partial-(\d+)$", p.name) or re.match(re.escape(_DOWNLOAD_PREFIX) + r"(\d+)-", p.name)
        if m and not _pid_alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _install_dir(staging: Path, root: Path, version: str) -> None:
    """Rename the finished folder into place; a complete copy another process put there wins."""
    if root.exists():
        existing = read_manifest(root)
        if existing is not None and existing.get("version") == version and _files_present(root, existing):
            return
        shutil.rmtree(root)  # incomplete or damaged (our manifest is written last, inside the temp folder)
    try:
        os.rename(staging, root)
    except OSError:
        existing = read_manifest(root)
        if existing is None or not _files_present(root, existing):
            raise


def download_sdist(version: str, dest: Path, *, pip: list[str] | None = None) -> Path:
    """``pip download --no-deps --no-binary :all: llama-cpp-python==version`` into ``dest``.

    pip prepares the package's metadata (it installs the build backend into an isolated
    environment for that) but compiles nothing. The reporter shows its steps.
    """
    requirement = f"{PACKAGE}=={version}"
    cmd = [*(pip or [sys.executable, "-m", "pip"]), "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "--progress-bar", "off", "-d", str(dest), requirement]
    env = {**os.environ, "PIP_NO_INPUT": "1"}
    lines: list[str] = []
    reporter = get_reporter()
    with reporter.progress(f"fetching llama.cpp's converter ({requirement} source, usually from pip's cache)",
                           total=None, unit="pip steps") as bar:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                lines.append(line)
                if not line.startswith(" ") or line.lstrip().startswith(("Downloading", "Using cached", "Saved")):
                    bar.advance(1, step=line.strip()[:80])
        code = proc.wait()
    found = sorted(dest.glob("*.tar.gz"))
    if code != 0 or len(found) != 1:
        tail = "\n".join(lines[-8:])
        raise FtpackError(f"pip could not download the source of {requirement} (exit {code}):\n{tail}",
                          "llama.cpp's converter comes from that source distribution; check that pip can reach "
                          "PyPI or its cache, or pass --llama-cpp DIR (a llama.cpp checkout).")
    return found[0]


def extract_sdist(sdist: Path, dest: Path, version: str) -> dict[str, Any]:
    """Extract llama.cpp's converter, gguf-py and vocab tests from the sdist into ``dest``.

    Only regular files below ``<top>/vendor/llama.cpp/`` that :func:`_wanted` names are
    written, each to a path built from its checked relative name (no links, no ``..``).
    Returns the manifest: version, llama.cpp commit, files with size and sha256, and the
    architecture lists parsed from the extracted scripts.
    """
    dest.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[Any]] = {}
    commit = None
    sdist_version = None
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts
            if len(parts) < 2 or not member.isfile():
                continue
            inner = "/".join(parts[1:])
            if inner == "PKG-INFO":
                sdist_version = _pkg_info_version(tar.extractfile(member).read().decode("utf-8", "replace"))
                continue
            if inner == ".git/modules/vendor/llama.cpp/HEAD":
                head = tar.extractfile(member).read().decode("ascii", "replace").strip()
                commit = head if re.fullmatch(r"[0-9a-f]{40}", head) else None
                continue
            if not inner.startswith(VENDOR_PREFIX):
                continue
            rel = inner[len(VENDOR_PREFIX):]
            if not _wanted(rel) or any(p in ("", ".", "..") for p in rel.split("/")):
                continue
            target = dest.joinpath(*rel.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            h = hashlib.sha256()
            with tar.extractfile(member) as src, open(target, "wb") as out:
                while block := src.read(1 << 20):
                    h.update(block)
                    out.write(block)
            files[rel] = [target.stat().st_size, h.hexdigest()]
    if sdist_version is not None and sdist_version != version:
        raise FtpackError(f"{sdist.name} holds {PACKAGE} {sdist_version}, not {version}.")
    missing = [rel for rel in REQUIRED_FILES if rel not in files]
    if missing:
        raise FtpackError(f"{sdist.name} lacks {', '.join(missing)}; this llama-cpp-python version does not "
                          "vendor llama.cpp's converter as ftpack expects.",
                          "Pass --llama-cpp DIR (a llama.cpp checkout) instead.")
    return {
        "format": _MANIFEST_FORMAT, "version": version, "llama_cpp_commit": commit, "files": files,
        "text_architectures": parse_converter_architectures(dest),
        "runtime_architectures": sorted(parse_runtime_architectures(dest / "gguf-py")),
    }


def _pkg_info_version(text: str) -> str | None:
    m = re.search(r"^Version:\s*(\S+)", text, re.MULTILINE)
    return m.group(1) if m else None


# -- what it converts, what llama.cpp runs --------------------------------------------------------

@dataclass
class _ClassInfo:
    bases: list[str]
    model_arch: str | None  # MODEL_ARCH member name set in the class body
    registered: list[str] = field(default_factory=list)


def _last_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _scan_classes(source: str) -> dict[str, _ClassInfo]:
    classes: dict[str, _ClassInfo] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        info = _ClassInfo([b for b in (_last_name(x) for x in node.bases) if b], None)
        for stmt in node.body:
            target = value = None
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                target, value = stmt.targets[0], stmt.value
            elif isinstance(stmt, ast.AnnAssign):
                target, value = stmt.target, stmt.value
            if (isinstance(target, ast.Name) and target.id == "model_arch" and isinstance(value, ast.Attribute)
                    and _last_name(value.value) == "MODEL_ARCH"):
                info.model_arch = value.attr
        for deco in node.decorator_list:
            if (isinstance(deco, ast.Call) and _last_name(deco.func) == "register"
                    and isinstance(deco.func, ast.Attribute) and _last_name(deco.func.value) == "ModelBase"):
                info.registered += [a.value for a in deco.args
                                    if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        classes[node.name] = info
    return classes


def _resolve_arch(name: str, classes: Mapping[str, _ClassInfo], seen: frozenset[str] = frozenset()) -> str | None:
    info = classes.get(name)
    if info is None or name in seen:
        return None
    if info.model_arch is not None:
        return info.model_arch
    for base in info.bases:
        arch = _resolve_arch(base, classes, seen | {name})
        if arch is not None:
            return arch
    return None


def _dict_literal(source: str, variable: str) -> dict[Any, Any] | None:
    """The dict assigned to a module-level ``variable``: keys as source text, values literal."""
    for node in ast.parse(source).body:
        target = value = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        if isinstance(target, ast.Name) and target.id == variable and isinstance(value, ast.Dict):
            out = {}
            for k, v in zip(value.keys, value.values):
                if k is None:
                    continue
                key = k.value if isinstance(k, ast.Constant) else _last_name(k)
                if isinstance(v, ast.Constant):
                    out[key] = v.value
            return out
    return None


def model_arch_names(gguf_py: Path) -> dict[str, str]:
    """gguf-py's ``MODEL_ARCH_NAMES``: MODEL_ARCH member -> llama.cpp architecture name."""
    constants = Path(gguf_py) / "gguf" / "constants.py"
    names = _dict_literal(constants.read_text(encoding="utf-8"), "MODEL_ARCH_NAMES")
    if not names:
        raise FtpackError(f"{constants} has no MODEL_ARCH_NAMES table; this llama.cpp is not one ftpack can read.")
    return names


def parse_runtime_architectures(gguf_py: Path) -> frozenset[str]:
    """llama.cpp architecture names (``general.architecture``) of this gguf-py, projectors excluded.

    An approximation of what the matching llama.cpp runs: gguf-py's MODEL_ARCH_NAMES and
    the C++ LLM_ARCH table come from the same commit, and are kept in step upstream.
    """
    names = model_arch_names(gguf_py)
    return frozenset(v for k, v in names.items() if k != _MMPROJ)


def parse_converter_architectures(root: Path) -> dict[str, str | None]:
    """Hugging Face ``architectures`` names llama.cpp's converter handles as text models.

    Read from the ``@ModelBase.register("...")`` decorators of convert_hf_to_gguf.py and,
    in newer trees, of the ``conversion/`` package (whose ``TEXT_MODEL_MAP`` is then the
    list ``get_model_class`` accepts; it also names two speech models registered only as
    projectors, left out here). Value: the llama.cpp architecture name the class
    writes (``model_arch``, followed through base classes), None when not statically
    known. Projector (mmproj) classes are left out. Nothing is imported.
    """
    root = Path(root)
    files = [root / CONVERT_SCRIPT] + sorted((root / "conversion").glob("*.py"))
    classes: dict[str, _ClassInfo] = {}
    for f in files:
        if f.is_file():
            for name, info in _scan_classes(f.read_text(encoding="utf-8")).items():
                if name not in classes or (classes[name].model_arch is None and info.model_arch is not None):
                    classes[name] = info
    arch_names = model_arch_names(root / "gguf-py")
    out: dict[str, str | None] = {}
    for cls_name, info in classes.items():
        arch = _resolve_arch(cls_name, classes)
        if arch == _MMPROJ:
            continue
        for hf_name in info.registered:
            out[hf_name] = arch_names.get(arch) if arch else None
    init = root / "conversion" / "__init__.py"
    text_map = _dict_literal(init.read_text(encoding="utf-8"), "TEXT_MODEL_MAP") if init.is_file() else None
    if text_map is not None:  # what get_model_class accepts; a name also needs a text-model class
        out = {name: arch for name, arch in out.items() if name in text_map}
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class ConverterSupport:
    """What one llama.cpp converts (HF architecture -> llama.cpp architecture) and runs."""

    text_architectures: Mapping[str, str | None]
    runtime_architectures: frozenset[str]
    origin: str
    checked: bool = True  # False: a checkout whose lists could not be read; its script decides


def converter_support(source: LlamaCppSource | None = None, *, download: bool = True) -> ConverterSupport:
    """The architecture lists of ``source`` (default: :func:`llama_cpp_source`).

    For the vendored copy they were parsed once at extraction and are read from its
    manifest; a checkout is parsed on each new process.
    """
    source = source or llama_cpp_source(download=download)
    manifest = read_manifest(source.root) if source.version else None
    if manifest is not None and "text_architectures" in manifest:
        return ConverterSupport(dict(manifest["text_architectures"]),
                                frozenset(manifest["runtime_architectures"]), source.origin)
    return _parsed_support(source.root, source.origin)


@lru_cache(maxsize=8)
def _parsed_support(root: Path, origin: str) -> ConverterSupport:
    try:
        return ConverterSupport(parse_converter_architectures(root), parse_runtime_architectures(root / "gguf-py"),
                                origin)
    except (OSError, SyntaxError, FtpackError):  # a checkout laid out differently: let its script decide
        return ConverterSupport({}, frozenset(), origin, checked=False)


def hf_architecture(config_json: Mapping[str, Any]) -> str | None:
    """``architectures[0]`` of a config.json (None when it names none)."""
    archs = config_json.get("architectures") or []
    return archs[0] if archs and isinstance(archs[0], str) else None


def config_architecture(config_json: Mapping[str, Any]) -> str | None:
    """The Hugging Face class a model with this config.json is: ``architectures[0]``, or, for
    a config.json that names none (transformers' Auto classes load it all the same), the
    class ``AutoModelForCausalLM`` builds for its ``model_type`` (transformers'
    ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``: ``llama`` -> ``LlamaForCausalLM``). None when
    neither says; transformers is looked at only when ``architectures`` is missing.
    """
    arch = hf_architecture(config_json)
    if arch is not None:
        return arch
    model_type = config_json.get("model_type")
    return causal_lm_class(model_type) if isinstance(model_type, str) and model_type else None


def _unnamed_architecture(config_json: Mapping[str, Any]) -> str:
    """Why a config.json has no architecture, fit for an error message."""
    model_type = config_json.get("model_type")
    if not model_type:
        return "its config.json names no architectures and no model_type"
    return (f"its config.json names no architectures, and transformers knows no causal language model "
            f"for its model_type {model_type!r}")


def conversion_route(config_json: Mapping[str, Any],
                     support: ConverterSupport | None = None) -> tuple[str | None, str]:
    """How a model with this config.json becomes a GGUF: ``("own" | "vendored" | None, reason)``.

    ``"own"``: ftpack's streaming converter (the llama family). ``"vendored"``: llama.cpp's
    convert_hf_to_gguf.py, which registers the architecture, and the installed llama.cpp
    knows the architecture it writes. ``None``: neither; ``reason`` says why, fit for an
    error message. Pure when ``support`` is given; otherwise it comes from
    :func:`converter_support` (the vendored copy, fetched once per llama-cpp-python version).
    """
    from ftpack.gguf.convert import ARCHITECTURES

    arch = config_architecture(config_json)
    own = ", ".join(sorted(ARCHITECTURES))
    text_config = config_json.get("text_config")
    inner = hf_architecture(text_config) if isinstance(text_config, Mapping) else None
    if arch is None and inner is None:
        return None, f"{_unnamed_architecture(config_json)}, so no converter can tell what it is."
    shown = arch if hf_architecture(config_json) is not None or arch is None else \
        f"{arch} (transformers' class for model_type {config_json.get('model_type')!r})"
    if arch in ARCHITECTURES:
        return "own", f"{shown} converts with ftpack's streaming converter (llama.cpp architecture " \
                      f"{ARCHITECTURES[arch].gguf_arch})."
    if support is None:
        try:
            support = converter_support()
        except FtpackError as err:
            return None, (f"architecture {arch or '(none named)'} needs llama.cpp's converter (ftpack's own converts "
                          f"{own}), which is not available: {err.message}")
    if not support.checked:
        return "vendored", (f"{arch} goes to llama.cpp's convert_hf_to_gguf.py ({support.origin}; its architecture "
                            "list could not be read, so the script itself decides).")
    name = next((a for a in (inner, arch) if a and a in support.text_architectures), None)
    if name is None:
        label = shown or f"(none named; model_type {config_json.get('model_type')!r})"
        return None, (f"architecture {label} cannot be converted to GGUF: ftpack's converter handles {own}, and "
                      f"llama.cpp's convert_hf_to_gguf.py ({support.origin}) registers no such text model "
                      f"({len(support.text_architectures)} others).")
    gguf_arch = support.text_architectures[name]
    if gguf_arch is not None and gguf_arch not in support.runtime_architectures:
        return None, (f"{name} converts to llama.cpp architecture {gguf_arch!r}, which the installed llama.cpp "
                      f"({support.origin}) does not list among the architectures it runs.")
    return "vendored", (f"{name} converts with llama.cpp's convert_hf_to_gguf.py ({support.origin}; llama.cpp "
                        f"architecture {gguf_arch or 'chosen by the converter'}).")


# -- GGUF bases: what transformers dequantizes them into, and back -------------------------

#: transformers' legacy GGUF loader (modeling_gguf_pytorch_utils.load_gguf_checkpoint, 5.24):
#: general.architecture -> the name its tables use, where they differ ...
_GGUF_TO_TRANSFORMERS = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss",
                         "minimax-m2": "minimax_m2"}
#: ... and the model_type the config then gets, where that differs again.
_GGUF_MODEL_TYPE = {"gemma3": "gemma3_text", "gemma4": "gemma4_text"}
#: Names in transformers' GGUF tables that are no causal language model.
_GGUF_NOT_CAUSAL = ("t5", "t5encoder", "umt5", "general", "tokenizer")


def transformers_gguf_architectures() -> list[str]:
    """The GGUF architectures transformers can dequantize into a causal LM (for messages).

    Its GGUF loaders' own tables: the fast path's ``GGUF_CONFIG_ARCHS`` and the legacy
    loader's ``GGUF_CONFIG_MAPPING``; neither import pulls in torch.
    """
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING
    from transformers.integrations.gguf import GGUF_CONFIG_ARCHS

    gguf_name = {t: g for g, t in _GGUF_TO_TRANSFORMERS.items()}
    legacy = {gguf_name.get(k, k) for k in GGUF_CONFIG_MAPPING
              if k not in _GGUF_NOT_CAUSAL and causal_lm_class(_GGUF_MODEL_TYPE.get(k, k))}
    return sorted(set(GGUF_CONFIG_ARCHS) | legacy)


def dequantized_architecture(gguf_path: Path | str) -> tuple[str | None, str]:
    """``(HF architecture, "")`` that transformers' ``gguf_file=`` loading gives this GGUF —
    what ftpack trains on and later converts back — or ``(None, why not)``.

    Mirrors transformers 5.24's choice of loader (its fast path for ``GGUF_CONFIG_ARCHS``,
    else the legacy one with its renames) from the header alone, so it runs at config load
    in a second, without torch. Unreadable files raise :class:`FtpackError`.
    """
    from ftpack.gguf.header import read_gguf_header

    header = read_gguf_header(gguf_path)
    arch = header.get("general.architecture", "STRING")
    if not arch:
        return None, "the GGUF names no general.architecture"
    known = transformers_gguf_architectures()
    cannot = (f"transformers cannot load a {arch!r} GGUF as a causal language model (it can: "
              f"{', '.join(known)}), and ftpack trains a GGUF base on transformers' dequantized copy")
    from transformers.integrations.gguf import GGUF_CONFIG_ARCHS

    if arch in GGUF_CONFIG_ARCHS:  # transformers' fast path rebuilds the config from the metadata
        import struct

        from transformers.integrations.gguf import get_gguf_config, read_gguf_metadata

        try:
            metadata, tensor_names = read_gguf_metadata(str(gguf_path))
            config = get_gguf_config(metadata, tensor_names)
        except (KeyError, ValueError, IndexError, TypeError, struct.error) as exc:
            return None, f"transformers cannot rebuild a config from this {arch!r} GGUF ({exc})"
        names = config.get("architectures") or []
        model_type = str(config.get("model_type") or arch)
        hf = names[0] if names else causal_lm_class(model_type)
    else:
        from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

        # transformers compares the list [general.name] with "mistral": only that exact name counts
        name = header.get("general.name", "STRING")
        model_type = "mistral" if "llama" in arch and name == "mistral" else _GGUF_TO_TRANSFORMERS.get(arch, arch)
        if arch in _GGUF_NOT_CAUSAL or model_type in _GGUF_NOT_CAUSAL or (
                arch not in GGUF_CONFIG_MAPPING and model_type not in GGUF_CONFIG_MAPPING):
            return None, cannot
        model_type = _GGUF_MODEL_TYPE.get(model_type, model_type)
        hf = causal_lm_class(model_type)
    if hf is None:
        return None, cannot + f" (its model type {model_type!r} has no causal LM class)"
    return hf, ""


def causal_lm_class(model_type: str) -> str | None:
    """The class ``AutoModelForCausalLM`` builds for ``model_type`` (transformers' own table)."""
    return _causal_lm_classes().get(model_type)


@lru_cache(maxsize=1)
def _causal_lm_classes() -> dict[str, str]:
    """transformers' ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``, read from its source with ``ast``:
    importing the module imports torch (seconds), the literal takes milliseconds, and finding
    the file imports nothing (not even transformers). A layout this cannot read falls back
    to the import."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("transformers")
        package = Path(next(iter(spec.submodule_search_locations)))  # type: ignore[union-attr, arg-type]
        tree = ast.parse((package / "models" / "auto" / "modeling_auto.py").read_text(encoding="utf-8"))
        for node in tree.body:
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and node.value.args
                    and any(getattr(t, "id", None) == "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES" for t in node.targets)):
                return {str(k): str(v) for k, v in ast.literal_eval(node.value.args[0])}
    except (OSError, SyntaxError, ValueError, TypeError, AttributeError, StopIteration):
        pass
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return {k: v for k, v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items() if isinstance(v, str)}


def gguf_base_route(gguf_path: Path | str, support: ConverterSupport | None = None) -> tuple[str | None, str]:
    """Whether a GGUF base (``--base file.gguf``, an Ollama blob) can be trained and shipped:
    ``(route, reason)`` like :func:`conversion_route`, for the model transformers dequantizes
    it into. ``None``: transformers cannot load it, or the trained model could not become a
    GGUF again; ``reason`` says which.
    """
    hf, why = dequantized_architecture(gguf_path)
    if hf is None:
        return None, why + "."
    route, reason = conversion_route({"architectures": [hf]}, support)
    if route is None:
        return None, f"transformers loads it as {hf}, but the trained model could not become a GGUF again: {reason}"
    return route, f"transformers loads it as {hf}; {reason}"


def require_conversion_route(model_dir: Path, source: LlamaCppSource, what: str | None = None) -> None:
    """Refuse, before llama.cpp's converter starts, a folder whose architecture it cannot
    convert: a user error naming the architecture and what to do, not the script's traceback."""
    config_path = Path(model_dir) / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # the script itself says what is wrong with the folder
    if not isinstance(config, dict):
        return
    route, reason = conversion_route(config, converter_support(source))
    if route is None:
        raise bad_input(f"Cannot convert {what or Path(model_dir).name} ({model_dir}): {reason}",
                        "Pick a base of an architecture llama.cpp supports (docs/architectures.md lists them), or pass "
                        "--llama-cpp DIR (a newer llama.cpp checkout) if it supports this model.")


def supported_architectures(support: ConverterSupport | None = None) -> dict[str, str]:
    """Every HF architecture ftpack can turn into a GGUF llama.cpp runs: name -> route (for docs)."""
    from ftpack.gguf.convert import ARCHITECTURES

    support = support or converter_support()
    out = {name: "vendored" for name, arch in support.text_architectures.items()
           if arch is None or arch in support.runtime_architectures}
    out.update({name: "own" for name in ARCHITECTURES})
    return dict(sorted(out.items()))


# -- running it ----------------------------------------------------------------------------

def run_converter(source: LlamaCppSource, model_dir: Path, outfile: Path, outtype: str,
                  extra_args: Iterable[str] = (), *, what: str | None = None, model_name: str | None = None) -> None:
    """Run ``convert_hf_to_gguf.py model_dir --outfile outfile --outtype outtype`` in a subprocess.

    A folder whose architecture the script does not register is refused first
    (:func:`require_conversion_route`). The script runs with its own gguf-py first on
    PYTHONPATH, this Python, and output captured; a non-zero exit raises FtpackError with
    the last lines it printed. ``model_name``: general.name (``--model-name``), which ftpack
    decides because llama.cpp's tokenizer reads it (ftpack.training.token_check); without
    it the script takes one from the model card or the folder's name.
    """
    require_conversion_route(model_dir, source, what)
    reporter = get_reporter()
    lines: list[str] = []
    with _architecture_named(Path(model_dir), Path(outfile).parent) as folder:
        cmd = [sys.executable, str(source.convert_script), str(folder), "--outfile", str(outfile),
               "--outtype", outtype, *(["--model-name", model_name] if model_name is not None else []), *extra_args]
        with reporter.progress(f"converting {what or Path(model_dir).name} with llama.cpp's convert_hf_to_gguf.py "
                               f"({source.origin})", total=None, unit="lines") as bar:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    env=source.subprocess_env())
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip()
                if line:
                    lines.append(line)
                    del lines[:-200]
                    bar.advance(1)
            code = proc.wait()
    if code != 0:
        raise converter_error(code, lines, source)


@contextlib.contextmanager
def _architecture_named(model_dir: Path, scratch: Path) -> Iterator[Path]:
    """The folder to give llama.cpp's converter, which reads the architecture from config.json's
    ``architectures`` alone: ``model_dir`` itself when that names one (or cannot be read: the
    script says what is wrong); else a folder of the same name in ``scratch`` with links to
    ``model_dir``'s files and a config.json naming the class transformers builds for its
    ``model_type`` (:func:`config_architecture`), removed afterwards."""
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    arch = config_architecture(config) if isinstance(config, dict) and hf_architecture(config) is None else None
    if arch is None:
        yield model_dir
        return
    tmp = Path(tempfile.mkdtemp(prefix="ftpack-named-", dir=scratch))
    try:
        folder = tmp / model_dir.name
        folder.mkdir()
        for entry in model_dir.iterdir():
            if entry.name == "config.json":
                continue
            try:
                (folder / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
            except OSError:  # no symlinks here (some Windows setups): a copy
                (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, folder / entry.name)
        (folder / "config.json").write_text(json.dumps({**config, "architectures": [arch]}, indent=2) + "\n",
                                            encoding="utf-8")
        yield folder
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def converter_error(code: int, lines: list[str], source: LlamaCppSource) -> FtpackError:
    """An FtpackError for a failed converter run: its last lines and what they usually mean."""
    tail = [ln for ln in lines if not ln.startswith(("INFO:", "Writing:"))][-10:] or lines[-10:]
    text = "\n".join(tail)
    hint = "Check that this llama.cpp supports the model, or pass --llama-cpp DIR (a newer llama.cpp checkout)."
    if "BPE pre-tokenizer was not recognized" in text:
        hint = ("The model's BPE tokenizer is one llama.cpp does not know (its pre-tokenizer check hash is not in "
                "convert_hf_to_gguf.py), so llama.cpp could not tokenize like it. Use a base whose tokenizer "
                "llama.cpp supports.")
    elif "ModuleNotFoundError" in text or "ImportError" in text:
        hint = (f"A Python package the converter needs is missing; see "
                f"{source.root / 'requirements'} for its requirements.")
    return FtpackError(f"llama.cpp's convert_hf_to_gguf.py ({source.origin}) failed (exit {code}):\n{text}", hint)


def gguf_summary(path: Path) -> tuple[str, int, str | None]:
    """(general.architecture, tensor count, tokenizer.ggml.pre) of a GGUF the converter wrote."""
    from ftpack.gguf.header import read_gguf_header

    header = read_gguf_header(path)
    return (header.get("general.architecture", "STRING") or "?", len(header.tensors),
            header.get("tokenizer.ggml.pre", "STRING"))
