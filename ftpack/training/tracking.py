"""``--report-to``: Hugging Face's experiment-tracking integrations (``TrainingArguments.report_to``).

The values are transformers' own names (:data:`INTEGRATIONS`; tests/test_tracking.py
checks them against ``transformers.integrations.integration_utils.INTEGRATION_TO_CALLBACK``),
plus ``none`` (the default) and ``all`` (every integration installed). Checked when the
config is loaded (:func:`check_report_to`) with :func:`importlib.util.find_spec` only, so
a typo or a missing package is exit 2 in a second, before any heavy import and long
before training. While training runs, :func:`logging_env` points the integrations that
write local files into the training folder, unless the library's own environment
variable already says where (``TENSORBOARD_LOGGING_DIR``, ``WANDB_DIR``, ``TRACKIO_DIR``).

Deliberately light: only the standard library at import time (config loading uses it).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from datetime import datetime
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

from ftpack.core.errors import bad_input

#: Integration -> (alternatives of modules that must all import, what to ``pip install``).
#: The modules are those transformers' ``is_*_available`` look for.
INTEGRATIONS: dict[str, tuple[tuple[tuple[str, ...], ...], str]] = {
    "azure_ml": ((("azureml.core.run",),), "azureml-core"),
    "clearml": ((("clearml",),), "clearml"),
    "codecarbon": ((("codecarbon",),), "codecarbon"),
    "comet_ml": ((("comet_ml",),), "comet-ml"),
    "dagshub": ((("dagshub", "mlflow"),), "dagshub mlflow"),
    "dvclive": ((("dvclive",),), "dvclive"),
    "flyte": ((("flytekit",),), "flytekit"),
    "kubeflow": ((), ""),  # no package: the environment a Kubeflow TrainJob sets (see is_available)
    "mlflow": ((("mlflow",),), "mlflow"),
    "neptune": ((("neptune",),), "neptune"),
    "swanlab": ((("swanlab",),), "swanlab"),
    "tensorboard": ((("tensorboard",), ("tensorboardX",)), "tensorboard"),
    "trackio": ((("trackio",),), "trackio"),
    "wandb": ((("wandb",),), "wandb"),
}
#: Every value ``--report-to`` takes.
REPORT_TO_VALUES = ("none", "all", *INTEGRATIONS)

#: Integration -> (its environment variable for where it writes, the folder inside the
#: training folder used when that variable is unset). The others write where their
#: library decides (a server, or the current folder).
LOCAL_DIRS: dict[str, tuple[str, str]] = {
    "tensorboard": ("TENSORBOARD_LOGGING_DIR", "runs"),  # + one folder per run, as transformers names it
    "wandb": ("WANDB_DIR", "."),  # wandb writes its own wandb/ folder inside
    "trackio": ("TRACKIO_DIR", "trackio"),
}


def _installed(modules: Sequence[str]) -> bool:
    for name in modules:
        try:
            if importlib.util.find_spec(name) is None:
                return False
        except (ImportError, ValueError):  # a dotted name whose parent package is missing
            return False
    return True


def is_available(integration: str) -> bool:
    """Whether ``integration``'s package is installed (without importing it)."""
    alternatives, _ = INTEGRATIONS[integration]
    if integration == "kubeflow":
        return bool(os.environ.get("KUBEFLOW_TRAINER_SERVER_URL"))
    return any(_installed(modules) for modules in alternatives)


def check_report_to(values: Iterable[str], label: str = "report_to") -> tuple[str, ...]:
    """``--report-to`` values, lower-cased, comma lists split, duplicates dropped (none given: ``()``); exit 2
    for an unknown name (listing the valid ones), ``none`` / ``all`` next to other names,
    or an integration whose package is not installed (naming what to install)."""
    names: list[str] = []
    for value in values:
        for part in str(value).split(","):
            name = part.strip().lower()
            if name and name not in names:
                names.append(name)
    if not names:  # an empty list: the default, none
        return ()
    unknown = [n for n in names if n not in REPORT_TO_VALUES]
    if unknown:
        raise bad_input(f"{label}: unknown integration {', '.join(map(repr, unknown))}.",
                        f"Use one or more of: {', '.join(REPORT_TO_VALUES)} (comma-separated or repeated).")
    alone = [n for n in names if n in ("none", "all")]
    if alone and len(names) > 1:
        raise bad_input(f"{label}: {alone[0]!r} cannot be combined with other integrations ({', '.join(names)}).",
                        f"Give {alone[0]} alone, or name the integrations.")
    if "kubeflow" in names and not is_available("kubeflow"):
        raise bad_input(f"{label}: kubeflow reports to the Kubeflow Trainer, which sets KUBEFLOW_TRAINER_SERVER_URL "
                        "in a TrainJob's environment; it is not set here.",
                        "Run inside a Kubeflow TrainJob (transformers then reports to it by itself), or drop kubeflow.")
    missing = [n for n in names if n in INTEGRATIONS and n != "kubeflow" and not is_available(n)]
    if missing:
        packages = " ".join(INTEGRATIONS[n][1] for n in missing)
        def needs(name: str) -> str:
            pkgs = INTEGRATIONS[name][1].split()
            return f"{name} needs the package{'s' if len(pkgs) > 1 else ''} {' and '.join(pkgs)}"

        raise bad_input(f"{label}: {'; '.join(map(needs, missing))}, not installed here.",
                        f"pip install {packages} (in the environment ftpack runs in), or leave "
                        f"{'it' if len(missing) == 1 else 'them'} out of report_to.")
    return tuple(names)


def trainer_report_to(report_to: Sequence[str] | None) -> str | list[str]:
    """The value for ``TrainingArguments.report_to``: ``"none"`` unless integrations were asked for."""
    names = list(report_to or ())
    if not names or names == ["none"]:
        return "none"
    return "all" if names == ["all"] else names


def reporting_to(report_to: Sequence[str] | None) -> list[str]:
    """The integrations a run reports to (``all``: those installed, as transformers picks them)."""
    names = list(report_to or ())
    if names == ["all"]:
        return [n for n in INTEGRATIONS if is_available(n)]
    return [n for n in names if n in INTEGRATIONS]


def local_log_dirs(report_to: Sequence[str] | None, out_dir: Path,
                   environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment defaults that put the local logs of ``report_to`` inside ``out_dir``:
    {variable: folder}, without the variables already set (the user's choice stands)."""
    environ = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for name in reporting_to(report_to):
        if name not in LOCAL_DIRS:
            continue
        variable, sub = LOCAL_DIRS[name]
        if environ.get(variable):
            continue
        folder = Path(out_dir).absolute() / sub
        if name == "tensorboard":  # one folder per run, named like transformers' (and torch's) default
            import socket

            folder = folder / f"{datetime.now().strftime('%b%d_%H-%M-%S')}_{socket.gethostname()}"
        out[variable] = str(folder)
    return out


@contextlib.contextmanager
def logging_env(defaults: Mapping[str, str]) -> Iterator[None]:
    """Set ``defaults`` in ``os.environ`` for the block (those not set by then), then restore."""
    added = [k for k in defaults if not os.environ.get(k)]
    saved = {k: os.environ.get(k) for k in added}
    for k in added:
        os.environ[k] = defaults[k]
    try:
        yield
    finally:
        for k in added:
            if saved[k] is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = saved[k]
