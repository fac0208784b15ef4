"""`ftpack doctor`: a correct table on this machine, and never a crash."""

from __future__ import annotations

import json
import socket

from ftpack.commands import doctor
from ftpack.ollama.api import resolve_host


def test_doctor_json_has_every_row(run_cli, monkeypatch):
    with socket.socket() as s:  # a port where certainly nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{port}")
    result = run_cli("--json", "doctor")
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines()]
    rows = {r["name"]: r for r in events[0]["rows"]}
    for name in ("Python", "OS", "CPU / RAM", "Disk (builds)", "torch", "transformers", "peft", "trl",
                 "accelerate", "datasets", "bitsandbytes", "gguf", "llama-cpp-python", "ollama", "rich",
                 "click", "jinja2", "sentencepiece", "tokenizers", "Torch device", "bitsandbytes 4-bit",
                 "llama.cpp", "Ollama server", "Hugging Face cache"):
        assert name in rows, name
        assert rows[name]["status"] in ("ok", "warning", "missing")
    assert rows["Python"]["status"] == "ok"
    # Nothing listens there: a warning with the hint to start Ollama or set OLLAMA_HOST.
    assert rows["Ollama server"]["status"] == "warning"
    assert "ollama serve" in rows["Ollama server"]["hint"] and "OLLAMA_HOST" in rows["Ollama server"]["hint"]
    assert f":{port}" in rows["Ollama server"]["value"]
    assert events[-1]["event"] == "final"


def test_doctor_reports_the_real_torch_device():
    import torch

    row = doctor.check_torch_device()
    if torch.cuda.is_available():
        assert row.status == "ok" and torch.cuda.get_device_name(0) in row.value
    else:
        assert "CPU" in row.value


def test_missing_dependency_is_a_row(monkeypatch):
    from ftpack.core import manifest

    required = manifest.required_libraries()
    monkeypatch.setattr(manifest, "required_libraries", lambda: {**required, "no-such-pkg-ftpack": "1.0"})
    rows = {r.name: r for r in doctor.check_dependencies()}
    assert rows["no-such-pkg-ftpack"].status == "missing"
    assert "pip install" in rows["no-such-pkg-ftpack"].hint


def test_broken_native_probe_becomes_a_row_not_a_crash(monkeypatch):
    monkeypatch.setattr(doctor, "_PROBE", "import os; os.abort()")
    row = doctor.check_llama_cpp()
    assert row.status == "missing" and "does not load" in row.value
    row = doctor.check_bnb()
    assert row.status == "missing"


def test_ollama_host_forms(monkeypatch):
    for raw, want in [("", "http://127.0.0.1:11434"), ("0.0.0.0", "http://127.0.0.1:11434"),
                      ("example.com:8080", "http://example.com:8080"),
                      ("https://ollama.example.com", "https://ollama.example.com:443"),
                      ("http://10.0.0.5:11434/", "http://10.0.0.5:11434")]:
        monkeypatch.setenv("OLLAMA_HOST", raw)
        assert resolve_host() == want, raw


def test_hf_offline_is_reported(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/srv/hf")
    row = doctor.check_hf_cache()
    assert "/srv/hf/hub" in row.value and "offline" in row.value


def test_one_probe_finds_a_running_server(tmp_path):
    """doctor, `register auto` and the round trip share ftpack.ollama.probe.probe_server."""
    from ollama_double import OllamaDouble

    from ftpack.ollama.probe import probe_server

    double = OllamaDouble(tmp_path / "store", version="0.9.1").start()
    url = double.url
    try:
        probe = probe_server(url)
        row = doctor.check_ollama(url)
    finally:
        double.stop()
    assert probe.reachable and probe.version == "0.9.1" and probe.host == url
    assert row.status == "ok" and row.value == f"version 0.9.1 at {url}"


def test_probe_tells_a_server_that_is_not_ollama(tmp_path):
    import http.server
    import threading

    from ftpack.ollama.probe import probe_server

    class NotOllama(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html>hello</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotOllama)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        probe = probe_server(f"127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert not probe.reachable and probe.version is None and probe.reason
