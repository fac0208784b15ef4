"""The paths of a build directory, in one place.

```
builds/<name>/
  build.json                 the manifest (ftpack.core.manifest)
  data/train.jsonl eval.jsonl
  train/adapter/ | model/    PEFT adapter (lora, qlora) or full weights (sft, full)
  train/checkpoints/  loss.csv  loss.png  trainer_state.json  train_info.json
  gguf/<name>.<outtype>.gguf <name>.<QUANT>.gguf
  ollama/Modelfile
  register/registration.json
  report.md                  the model card
```
Stages and commands ask this object for a path instead of joining strings; a training run's
folder (``train/`` of a build, or `ftpack train --out`) is named by :class:`TrainOutputs`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ftpack.core.config import ADAPTER_METHODS

MANIFEST_NAME = "build.json"
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"


def gguf_file_stem(name: str) -> str:
    """Build names may carry an Ollama tag (`my-qa:v2`); file names may not (`my-qa_v2`)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


@dataclass(frozen=True)
class BuildLayout:
    """Where each stage of the build in ``root`` reads and writes."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).absolute())

    # -- whole build ---------------------------------------------------------------------
    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_NAME

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    # -- data ------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def train_file(self) -> Path:
        return self.data_dir / "train.jsonl"

    @property
    def eval_file(self) -> Path:
        return self.data_dir / "eval.jsonl"

    # -- train -----------------------------------------------------------------------------
    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    def training(self, method: str = "lora") -> "TrainOutputs":
        """The train stage's outputs, named by :class:`TrainOutputs` (the one naming
        `ftpack train --out` uses too)."""
        return TrainOutputs(self.train_dir, method)

    @property
    def adapter_dir(self) -> Path:
        return self.training("lora").weights

    @property
    def model_dir(self) -> Path:
        return self.training("full").weights

    @property
    def checkpoints_dir(self) -> Path:
        return self.training().checkpoints

    @property
    def loss_csv(self) -> Path:
        return self.training().loss_csv

    @property
    def loss_png(self) -> Path:
        return self.training().loss_png

    # -- gguf ------------------------------------------------------------------------------
    @property
    def gguf_dir(self) -> Path:
        return self.root / "gguf"

    def gguf_file(self, name: str, kind: str) -> Path:
        """``gguf/<name>.<kind>.gguf``; kind is an outtype (f16) or a quant type (Q4_K_M)."""
        return self.gguf_dir / f"{gguf_file_stem(name)}.{kind}.gguf"

    # -- ollama ----------------------------------------------------------------------------
    @property
    def ollama_dir(self) -> Path:
        return self.root / "ollama"

    @property
    def modelfile(self) -> Path:
        return self.ollama_dir / "Modelfile"

    @property
    def registration(self) -> Path:
        """What the register stage did (mode, name, where, store, digests)."""
        return self.stage_dir("register") / "registration.json"


@dataclass(frozen=True)
class TrainOutputs:
    """Where a training run writes inside its folder: the one naming of its outputs, used
    by `ftpack train`, the build's train stage and :func:`ftpack.training.train.train` alike."""

    root: Path
    method: str

    @property
    def weights(self) -> Path:
        """``adapter/`` for LoRA methods, ``model/`` for sft / full."""
        return self.root / (ADAPTER_DIR if self.method in ADAPTER_METHODS else MODEL_DIR)

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS_DIR

    @property
    def loss_csv(self) -> Path:
        return self.root / "loss.csv"

    @property
    def loss_png(self) -> Path:
        return self.root / "loss.png"

    @property
    def trainer_state(self) -> Path:
        return self.root / "trainer_state.json"

    @property
    def train_info(self) -> Path:
        return self.root / "train_info.json"

    def all(self) -> list[Path]:
        return [self.weights, self.loss_csv, self.loss_png, self.trainer_state, self.train_info]
