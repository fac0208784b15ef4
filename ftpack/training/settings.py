"""TrainSettings: every setting of a training run, in one dataclass built from the config.

The names are the config keys (= CLI flags) of :data:`ftpack.core.config.OPTIONS`, whose
defaults they take, so a flag, a config-file key, :func:`ftpack.training.train.train`'s
keyword, the resume fingerprint and the model card's hyper-parameter table all say the
same thing. Settings that only steer bookkeeping (how often to log or save, what code
may run) are left out of :meth:`TrainSettings.hyper_parameters`.

:data:`CHECKS` holds training's checks at config load (``--report-to``, ``--data``,
``--data-columns``, ``--template``), which :mod:`ftpack.settings` runs with every other domain's.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from ftpack.core.checks import Check
from ftpack.core.config import ADAPTER_METHODS, OPTION_BY_KEY, TRAINING_METHODS
from ftpack.core.errors import bad_input

#: Default peak learning rate per method (the usual recipes: QLoRA paper / TRL docs).
DEFAULT_LEARNING_RATE = {"qlora": 2e-4, "lora": 2e-4, "sft": 5e-5, "full": 2e-5}
#: Settings that do not change what is learned (not part of the fingerprint or model card).
BOOKKEEPING = ("logging_steps", "save_steps", "trust_remote_code", "allow_pickle", "gradient_checkpointing",
               "torch_compile", "report_to", "use_liger_kernel", "padding_free", "attn_implementation")


def _option_default(key: str) -> Any:
    return field(default=OPTION_BY_KEY[key].default)


@dataclass(frozen=True)
class TrainSettings:
    """How to fine-tune: method, schedule, LoRA / SFT shape, precision, seed."""

    method: str = _option_default("method")  # auto | qlora | lora | sft | full
    num_train_epochs: float = _option_default("num_train_epochs")
    max_steps: int = _option_default("max_steps")  # > 0 overrides the epochs
    per_device_train_batch_size: int = _option_default("per_device_train_batch_size")
    gradient_accumulation_steps: int = _option_default("gradient_accumulation_steps")
    learning_rate: float | None = _option_default("learning_rate")  # None: per method
    weight_decay: float = _option_default("weight_decay")
    warmup_ratio: float = _option_default("warmup_ratio")  # fraction of the optimizer steps
    lr_scheduler_type: str = _option_default("lr_scheduler_type")
    max_seq_length: int = _option_default("max_seq_length")
    gradient_checkpointing: bool | None = _option_default("gradient_checkpointing")  # None: by method/device
    lora_r: int = _option_default("lora_r")
    lora_alpha: int = _option_default("lora_alpha")
    lora_dropout: float = _option_default("lora_dropout")
    target_modules: tuple[str, ...] | None = None  # None: every linear layer of the blocks
    dora: bool = _option_default("dora")
    trainable_layers: int = _option_default("trainable_layers")  # sft
    train_embeddings: bool = _option_default("train_embeddings")  # sft
    train_on_prompts: bool = _option_default("train_on_prompts")
    packing: bool = _option_default("packing")
    precision: str = _option_default("precision")  # auto | bf16 | fp16 | fp32
    torch_compile: bool | None = _option_default("torch_compile")  # None: by method/device/steps
    use_liger_kernel: bool | None = _option_default("use_liger_kernel")  # None: on CUDA (cuda_speed)
    padding_free: bool | None = _option_default("padding_free")  # None: on CUDA (cuda_speed)
    attn_implementation: str | None = _option_default("attn_implementation")  # None: by device (cuda_speed)
    qlora_bf16_base: bool | None = _option_default("qlora_bf16_base")  # None: on CUDA with bf16 (cuda_speed)
    logging_steps: int = _option_default("logging_steps")
    report_to: tuple[str, ...] | None = None  # None: none (ftpack.training.tracking)
    save_steps: int = _option_default("save_steps")
    seed: int = _option_default("seed")
    trust_remote_code: bool = _option_default("trust_remote_code")
    allow_pickle: bool = _option_default("allow_pickle")

    def __post_init__(self) -> None:
        if self.target_modules is not None:
            object.__setattr__(self, "target_modules", tuple(self.target_modules) or None)
        if self.report_to is not None:  # build.json holds a list; a bare name works too
            names = (self.report_to,) if isinstance(self.report_to, str) else tuple(self.report_to)
            object.__setattr__(self, "report_to", names or None)

    @classmethod
    def from_config(cls, cfg: Any) -> "TrainSettings":
        """From a BuildConfig (or build.json's config dict): a value of None means "not
        set", so the default applies."""
        get = cfg.get if isinstance(cfg, Mapping) else (lambda k: getattr(cfg, k, None))
        given = {f.name: get(f.name) for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in given.items() if v is not None})

    @classmethod
    def of(cls, settings: "TrainSettings | None" = None, **overrides: Any) -> "TrainSettings":
        """``settings`` (default: the defaults) with some fields replaced by name."""
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown training setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(settings or cls(), **overrides)

    @property
    def trains_adapter(self) -> bool:
        return self.method in ADAPTER_METHODS

    def resolved(self, device: str) -> "TrainSettings":
        """Concrete values for this machine: ``auto`` method, the method's learning rate,
        gradient checkpointing (on for full / qlora on a GPU)."""
        method, _ = resolve_method(self.method, device)
        lr = self.learning_rate if self.learning_rate is not None else DEFAULT_LEARNING_RATE[method]
        checkpointing = self.gradient_checkpointing
        if checkpointing is None:
            checkpointing = device == "cuda" and method in ("full", "qlora")
        return dataclasses.replace(self, method=method, learning_rate=lr, gradient_checkpointing=checkpointing)

    def hyper_parameters(self) -> dict[str, Any]:
        """What shapes the trained weights: the resume fingerprint and the model card."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in BOOKKEEPING}
        out["target_modules"] = list(self.target_modules) if self.target_modules else None
        return out


def resolve_method(method: str, device: str) -> tuple[str, str]:
    """(method, why): ``auto`` is QLoRA where a GPU makes 4-bit kernels fast, LoRA on CPU."""
    method = (method or "auto").lower()
    if method == "auto":
        if device == "cuda":
            return "qlora", "a CUDA GPU is present (4-bit base + LoRA saves memory)"
        return "lora", "no CUDA GPU (4-bit kernels are slow on CPU; fp32 base + LoRA)"
    if method not in TRAINING_METHODS:
        raise bad_input(f"Unknown training method {method!r}.", f"Use one of: auto, {', '.join(TRAINING_METHODS)}.")
    return method, "as asked"


def optimizer_steps(batches_per_epoch: int, settings: TrainSettings) -> int:
    """Total optimizer steps of a run, counted as the Trainer counts them: ``max_steps``
    when set, else epochs × ceil(batches per epoch / gradient accumulation)."""
    if settings.max_steps and settings.max_steps > 0:
        return settings.max_steps
    per_epoch = max(1, math.ceil(batches_per_epoch / settings.gradient_accumulation_steps))
    return max(1, math.ceil(settings.num_train_epochs * per_epoch))


def warmup_steps(warmup_ratio: float, total_steps: int) -> int:
    """Warm-up as a whole number of steps: ``--warmup-ratio`` × the run's optimizer steps.

    Computed here rather than handed to transformers, whose meaning of a fraction moved
    between versions (``warmup_ratio`` was removed in 5.x; ``warmup_steps`` reads a
    float < 1 as a ratio there but 1.0 as one step, and truncates a float in 4.x).
    """
    if warmup_ratio <= 0 or total_steps <= 0:
        return 0
    return min(total_steps, math.ceil(warmup_ratio * total_steps))


# -- checks at config load (run by ftpack.settings) ----------------------------------------

def _check_template(value: str, values: Mapping[str, Any], label: str) -> str:
    """A chat format in templates/ (any case, '-' for '_'); its canonical name."""
    from ftpack.training.templates import load_template

    return load_template(value).name


def _check_report_to(value: tuple[str, ...], values: Mapping[str, Any], label: str) -> tuple[str, ...] | None:
    """Integration names transformers knows, their packages installed (:mod:`ftpack.training.tracking`)."""
    from ftpack.training.tracking import check_report_to

    return check_report_to(value, label) or None


def _check_data(value: Any, values: Mapping[str, Any], label: str) -> Any:
    """A local dataset file or folder that exists, or a hub dataset id; ``--data-config``,
    ``--data-split``, ``--data-revision`` only where they apply (:mod:`ftpack.training.data_sources`;
    the hub is asked when the build starts, not here)."""
    from ftpack.training.data_sources import check_data

    return check_data(value, values, label)


def _check_data_columns(value: tuple[str, ...], values: Mapping[str, Any], label: str) -> tuple[str, ...] | None:
    """``FIELD=COLUMN`` items naming fields ftpack reads, each field and column once."""
    from ftpack.training.data_sources import check_columns

    return check_columns(value, values, label)


#: key -> check of the settings training owns (:func:`ftpack.core.checks.run_checks`).
CHECKS: dict[str, Check] = {"report_to": _check_report_to, "data": _check_data, "data_columns": _check_data_columns,
                            "template": _check_template}
