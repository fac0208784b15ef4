"""Where ftpack's data files are: the repository root in a checkout, ftpack/_data in a wheel."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parents[1]  # the ftpack package folder


def resource_path(name: str) -> Path:
    """Path of a data file shipped with ftpack (``templates``, ``Modelfile.j2``)."""
    for candidate in (_PKG.parent / name, _PKG / "_data" / name):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"ftpack data file {name!r} is missing from this installation")


def templates_dir() -> Path:
    return resource_path("templates")


def modelfile_template() -> Path:
    return resource_path("Modelfile.j2")
