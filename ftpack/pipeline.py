"""The build pipeline as data: which stages run, in which order, on what.

Each stage's work lives in the module named after the job (data.py, train.py,
gguf_convert.py, quantize.py, modelfile.py, ollama_api.py, verify.py); this module
only lists them for the runner and resolves the choices a build makes up front
(`--method auto`, `--register auto`) so that the manifest records what really ran.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

from ftpack.core.runner import Stage, StageContext, StageResult


def _lazy(target: str) -> Callable[[StageContext], StageResult]:
    """A stage function imported on first call (keeps `ftpack --help` instant)."""
    module, _, attr = target.partition(":")

    def run(ctx: StageContext) -> StageResult:
        return getattr(importlib.import_module(module), attr)(ctx)

    run.__name__ = attr
    return run


def build_stages() -> list[Stage]:
    """The stages of `ftpack build`, in order."""
    return [
        Stage("data", "validate and normalise the dataset", _lazy("ftpack.training.data:run_data_stage"),
              input_files=lambda cfg: [cfg.data]),
        Stage("train", "fine-tune", _lazy("ftpack.training.train:run_train_stage")),
        Stage("convert", "Hugging Face to GGUF (adapter fused on the fly)",
              _lazy("ftpack.gguf.convert:run_convert_stage")),
        Stage("quantize", "llama.cpp quantization", _lazy("ftpack.gguf.quantize:run_quantize_stage")),
        Stage("modelfile", "render and check the Ollama Modelfile", _lazy("ftpack.ollama.modelfile:run_modelfile_stage"),
              depends=("data", "quantize"), input_files=lambda cfg: [cfg.license]),
        Stage("register", "create the model in Ollama", _lazy("ftpack.ollama.registration:run_register_stage"),
              enabled=lambda cfg: cfg.register != "none"),
        Stage("verify", "smoke test and quantization fidelity", _lazy("ftpack.inference.verify:run_verify_stage"),
              depends=("data", "convert", "quantize", "modelfile")),
    ]


def resolve_method(method: str) -> tuple[str, str]:
    """(method, why): `auto` is QLoRA on a CUDA GPU and LoRA elsewhere."""
    if method != "auto":
        return method, "as asked"
    import torch

    if torch.cuda.is_available():
        return "qlora", f"CUDA GPU found ({torch.cuda.get_device_name(0)}): 4-bit base + LoRA"
    return "lora", "no CUDA GPU: bitsandbytes 4-bit brings no memory win on CPU, plain LoRA is faster"


def resolve_register(mode: str, host: str | None) -> tuple[str, str]:
    """(mode, why): `auto` registers with the server when it answers, else offline."""
    if mode != "auto":
        return mode, "as asked"
    from ftpack.core.doctor import check_ollama

    check = check_ollama(host, timeout=2.0)
    if check.status == "ok":
        return "server", f"Ollama server {check.value}"
    return "offline", f"Ollama server {check.value}: writing Ollama's model store directly"


def next_command(cfg: Any, build_dir: Path) -> str:
    """The exact command to try the model."""
    if cfg.register in ("server", "offline"):
        return f"ollama run {cfg.name}"
    return f"ftpack chat {build_dir}"
