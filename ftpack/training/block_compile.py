"""``--torch-compile``: the decoder blocks compiled with ``torch.compile`` (TorchInductor).

Eager PyTorch runs a LoRA block on a CPU as a few hundred small kernels per step: the
projections' matmuls, and between them casts, norms, rotary embeddings, SiLU, LoRA
scaling and their backward, each a pass over memory with its own dispatch. Inductor fuses
that elementwise work into a few C++ loops. Measured on the project's 2-core machine
(SmolLM2-135M, LoRA r16, bf16 autocast, the demo's batches; docs/benchmarks.md "Training speed on CPU"):
about 1.5x the eager tokens/s.

- **One graph for every block.** Each block class's ``forward`` is compiled once, with
  dynamic shapes and the block as an input (not a constant): every block of the model
  shares one compiled forward + backward, for any batch and sequence length.
- **Only where it pays.** A call the graph does not cover runs the block eagerly instead
  of compiling another graph: evaluation (no grad), the first block (its input needs no
  grad while the embeddings are frozen), a batch of one row, a batch without padding
  (:func:`_dispatching_forward`).
- **Compiled once per machine.** The first compile for a model and LoRA configuration
  (rank, alpha, dropout, targets) took 45-55 s on 2 cores; Inductor keeps the result in
  ftpack's cache (``torch-compile/``), and later runs load it in ~10 s. Dynamo allows 8
  recompiles per function, so a long-lived process that trains more than 8 different
  block configurations (a test session) runs the rest eagerly; a build is one process.
- **auto** compiles for LoRA with bf16 autocast on a CPU, in one process, for runs long
  enough to earn back a first compile (:data:`AUTO_MIN_STEPS`), when a C++ compiler is installed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ftpack.core.errors import FtpackError

#: ``--torch-compile auto``: only runs of at least this many optimizer steps (about a
#: minute's first compile on 2 cores is earned back after ~100 of the demo's steps; a
#: cached compile after a few).
AUTO_MIN_STEPS = 100


def c_compiler() -> str | None:
    """The C++ compiler Inductor would call (``CXX``, else ``c++``/``g++``/``clang++``)."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def resolve_torch_compile(asked: bool | None, *, method: str, device: str, bf16: bool, world: int, steps: int,
                          checkpointing: bool, dora: bool = False) -> tuple[bool, str]:
    """(compile the blocks?, why) for ``--torch-compile`` (True/False) or auto (None)."""
    if asked is False:
        return False, "off (--no-torch-compile)"
    if checkpointing:
        if asked:
            raise FtpackError("--torch-compile and gradient checkpointing cannot be combined here.",
                              "Drop one of them: --no-gradient-checkpointing or --no-torch-compile.")
        return False, "off: gradient checkpointing recomputes the blocks eagerly"
    if asked is None:
        if device != "cpu" or not bf16 or method != "lora" or dora:
            return False, "auto: off (on only for LoRA with bf16 autocast on a CPU, where it was measured)"
        if world > 1:
            return False, "auto: off in distributed runs"
        if steps < AUTO_MIN_STEPS:
            return False, f"auto: off for a run of {steps} steps (< {AUTO_MIN_STEPS}: a first compile would not pay)"
    if c_compiler() is None:
        if asked:
            raise FtpackError("--torch-compile needs a C++ compiler, and none was found (c++, g++, clang++).",
                              "Install one (Debian: apt-get install build-essential) or use --no-torch-compile.")
        return False, "auto: off (no C++ compiler found; apt-get install build-essential enables it)"
    return True, "on" if asked else f"auto: on ({steps} steps of bf16 CPU training)"


def compile_decoder_blocks(model: Any) -> int:
    """Run the decoder blocks of a transformers model (under PEFT too) through one compiled
    forward in training steps (:func:`_dispatching_forward`); returns how many blocks."""
    import types

    import torch
    from transformers.modeling_layers import GradientCheckpointingLayer

    from ftpack.core.locations import cache_dir

    blocks = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not blocks:
        return 0
    use_cache_dir(cache_dir() / "torch-compile")
    compiled: dict[type, Any] = {}
    for block in blocks:
        cls = type(block)
        if cls not in compiled:  # the class's forward, with the block as an input: one graph for all
            compiled[cls] = torch.compile(cls.forward, dynamic=True)
        block.forward = types.MethodType(_dispatching_forward(cls.forward, compiled[cls]), block)
    return len(blocks)


def use_cache_dir(path: Path) -> None:
    """Keep Inductor's compiled code in ``path`` unless the user chose a folder
    (``TORCHINDUCTOR_CACHE_DIR``). torch writes its default (``/tmp/torchinductor_USER``)
    into the variable on first use, so that value counts as not chosen."""
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is not None:
        try:
            from torch._inductor.runtime.cache_dir_utils import default_cache_dir
        except ImportError:  # pragma: no cover - another torch layout: leave it
            return
        if os.path.abspath(current) != os.path.abspath(default_cache_dir()):
            return
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)


def _dispatching_forward(eager_forward: Any, compiled_forward: Any) -> Any:
    """A block's forward that takes the compiled graph for a training step's usual call and
    runs eagerly otherwise, where the graph would need a recompile of its own (about a
    minute each on 2 cores): evaluation and generation (no grad, or eval mode), the first
    block (its input needs no grad), a batch of one row (Dynamo specializes size 1), and a
    batch without padding (transformers then passes no mask at all)."""
    import torch

    def forward(self, hidden_states, *args, **kwargs):
        if (self.training and torch.is_grad_enabled() and hidden_states.requires_grad
                and hidden_states.shape[0] > 1 and kwargs.get("attention_mask") is not None):
            return compiled_forward(self, hidden_states, *args, **kwargs)
        return eager_forward(self, hidden_states, *args, **kwargs)

    return forward
