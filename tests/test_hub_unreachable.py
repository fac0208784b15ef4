"""An unreachable Hugging Face hub: one clear ftpack error at config load within seconds,
not huggingface_hub's five "Retrying in Ns" lines over ~25 s (issue 19, point 10).

Each run is a fresh `python -m ftpack` (huggingface_hub reads HF_* at import) with an empty
HF cache and the hub pointed (HF_ENDPOINT) at a local address that refuses connections, or
at a server that accepts them and never answers.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture
def silent_endpoint():
    """A server that accepts connections (the kernel's backlog) and never answers a request."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def _ftpack(tmp_path: Path, endpoint: str, *args: str, **env: str) -> tuple[int, str, float]:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0",
                "TRANSFORMERS_OFFLINE": "0", "HF_HUB_CACHE": str(tmp_path / "empty-hf-cache"),
                "HF_HOME": str(tmp_path / "hf-home"), "COLUMNS": "200", **env}
    full_env.pop("FTPACK_DEBUG", None)
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "ftpack", "build", "x", "--base", HUB_ID, "--data", str(data),
                               "--out", str(tmp_path / "build"), "--no-register", *args],
                              env=full_env, cwd=tmp_path, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"still running after {exc.timeout} s: {exc.stdout}{exc.stderr}")
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started


def _assert_one_clear_error(status: int, output: str, seconds: float, endpoint: str) -> None:
    text = " ".join(output.split())
    assert status == 2, output
    assert f"Base model '{HUB_ID}' is not in the local Hugging Face cache" in text, output
    assert f"the hub ({endpoint}) is unreachable" in text, output
    for fix in ("HF_ENDPOINT", "local model folder", "HF_HUB_OFFLINE=1", "--base smollm2-135m"):
        assert fix in text, (fix, output)
    lowered = output.lower()
    for noise in ("retry", "retrying", "urllib3", "httpx", "traceback", "warning"):
        assert noise not in lowered, (noise, output)
    assert output.count("error:") == 1 and "deferred" not in text, output  # the one line, no stage started
    assert seconds < 10, f"{seconds:.1f} s"


def test_refused_connection_is_one_error_at_once(tmp_path, refused_endpoint):
    status, output, seconds = _ftpack(tmp_path, refused_endpoint)
    _assert_one_clear_error(status, output, seconds, refused_endpoint)
    assert "Connection refused" in output
    assert not (tmp_path / "build").exists()  # refused at config load: nothing written


def test_a_hub_that_never_answers_times_out_quickly(tmp_path, silent_endpoint):
    status, output, seconds = _ftpack(tmp_path, silent_endpoint, HF_HUB_ETAG_TIMEOUT="2")
    _assert_one_clear_error(status, output, seconds, silent_endpoint)
    assert "no answer within 2 s" in " ".join(output.split()), output


def test_debug_shows_the_librarys_error(tmp_path, refused_endpoint):
    status, output, _ = _ftpack(tmp_path, refused_endpoint, "--debug")
    assert status != 0
    assert "Traceback" in output and "ConnectError" in output, output  # the HTTP client's own exception
    assert "is unreachable" in output


def test_a_cached_model_needs_no_hub(tiny_llama, tmp_path, refused_endpoint):
    """In the HF cache, the hub down (not offline mode): resolved from the cache, quietly, at once."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--acme--tiny-chat"
    shutil.copytree(tiny_llama, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0",
           "TRANSFORMERS_OFFLINE": "0", "HF_ENDPOINT": refused_endpoint}
    env.pop("HF_HUB_CACHE", None)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", "from ftpack.training.bases import resolve_base; "
                           "print(resolve_base('acme/tiny-chat').path)"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip().splitlines()[-1]) == repo / "snapshots" / revision
    assert "retry" not in (proc.stdout + proc.stderr).lower(), proc.stderr
    assert time.monotonic() - started < 30
