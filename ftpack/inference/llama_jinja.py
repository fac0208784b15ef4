"""llama.cpp's own Jinja engine: how llama-server renders a GGUF's chat template.

Ollama 0.30+ serves a model that has no TEMPLATE through llama-server's
``/v1/chat/completions``, which renders the GGUF's ``tokenizer.chat_template`` with llama.cpp's
Jinja engine (``common/jinja/``), not with Python's jinja2 (``llm/llama_server.go@00f6d62``).
ftpack trains such a model on transformers' rendering of that template; this module runs
llama.cpp's renderer (``tools/llama_jinja/render.cpp``, built once by ``scripts/llama_jinja.sh``
and installed as the environment's ``bin/ftpack-llama-jinja``) so a build can prove both
engines give the same text.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Mapping, Sequence

from ftpack.core.errors import FtpackError

#: Environment variable naming the renderer binary (else ftpack's cache is searched).
BINARY_ENV = "FTPACK_LLAMA_JINJA"


def renderer_binary() -> Path | None:
    """``FTPACK_LLAMA_JINJA``, else this environment's ``bin/ftpack-llama-jinja``, else one on PATH."""
    import shutil
    import sys

    given = os.environ.get(BINARY_ENV)
    if given:
        return Path(given) if Path(given).is_file() else None
    beside = Path(sys.prefix) / "bin" / "ftpack-llama-jinja"
    if beside.is_file():
        return beside
    found = shutil.which("ftpack-llama-jinja")
    return Path(found) if found else None


def render_with_llama_cpp(template: str, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
                          bos_token: str = "", eos_token: str = "", enable_thinking: bool | None = None,
                          add_bos: bool = False) -> str:
    """The text llama-server renders for ``messages`` with ``template``; an FtpackError when the
    renderer is not built or the engine refuses the template."""
    binary = renderer_binary()
    if binary is None:
        raise FtpackError("llama.cpp's chat-template renderer is not built, so ftpack cannot check that llama.cpp "
                          "renders this model's Jinja template as training does.",
                          "Run `bash scripts/setup.sh` (it builds it once, ~2 min), or set FTPACK_LLAMA_JINJA.", code=2)
    request: dict[str, Any] = {"template": template, "messages": [dict(m) for m in messages],
                               "add_generation_prompt": add_generation_prompt, "bos_token": bos_token,
                               "eos_token": eos_token, "add_bos": add_bos}
    if enable_thinking is not None:
        request["enable_thinking"] = bool(enable_thinking)
    proc = subprocess.run([str(binary)], input=json.dumps(request).encode("utf-8"), capture_output=True, timeout=60)
    if proc.returncode != 0:
        why = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        raise FtpackError(f"llama.cpp's Jinja engine cannot render this chat template: {why[0]}",
                          "Ollama would fail the same way on this model; pass --template NAME to train and serve "
                          "it with one of ftpack's formats.", code=2)
    return proc.stdout.decode("utf-8")
