"""The tested set: every package version the whole test suite passed with.

``requirements/pinned.txt`` (pip's requirements format, every package with the sha256 of
each of its files on PyPI) is written by ``scripts/pins.py freeze`` from a green
environment and installed, exactly, by ``scripts/setup.sh``. This module only reads it:
`ftpack doctor` and the tests compare what is installed with what was tested.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

#: Where the tested set lives, relative to the repository root (ftpack/_data in a wheel).
PINNED_FILE = "requirements/pinned.txt"

#: Installed distributions that are not part of the tested set: ftpack itself.
NOT_PINNED = frozenset({"ftpack"})


def normalize(name: str) -> str:
    """PEP 503 name: ``Jinja2`` and ``jinja2``, ``llama_cpp_python`` and ``llama-cpp-python``
    are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(text: str) -> dict[str, str]:
    """``{normalized name: version}`` from a requirements file of ``name==version`` lines
    (continuation lines and ``--hash`` options allowed; comments ignored). Anything else
    is an error: the tested set pins every package exactly."""
    pins: dict[str, str] = {}
    logical = re.sub(r"\\\n", " ", text)
    for lineno, line in enumerate(logical.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)((?:\s+--hash=sha256:[0-9a-f]{64})*)", line)
        if not m:
            raise ValueError(f"line {lineno}: not an exact pin with hashes: {line[:80]!r}")
        pins[normalize(m.group(1))] = m.group(2)
    return pins


def pinned_hashes(text: str) -> dict[str, list[str]]:
    """``{normalized name: [sha256, ...]}`` of the same file."""
    logical = re.sub(r"\\\n", " ", text)
    out: dict[str, list[str]] = {}
    for line in logical.splitlines():
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)==", line)
        if m:
            out[normalize(m.group(1))] = re.findall(r"--hash=sha256:([0-9a-f]{64})", line)
    return out


def tested_set() -> dict[str, str] | None:
    """The tested set shipped with this ftpack, or None when the file is missing."""
    from ftpack.core.resources import resource_path

    try:
        return parse_pins(resource_path(PINNED_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def installed_versions() -> dict[str, str]:
    """``{normalized name: version}`` of every distribution installed in this environment's
    site-packages (what pip lists). Not the whole ``sys.path``: setuptools puts its vendored
    packages' metadata (``setuptools/_vendor``) on it once imported, which pip never installed."""
    import sysconfig
    from importlib import metadata

    site = list(dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib")))
    out: dict[str, str] = {}
    for dist in metadata.distributions(path=site):
        name = dist.metadata["Name"]
        if name:
            out.setdefault(normalize(name), dist.version)
    return out


@dataclass(frozen=True)
class PinDifference:
    """One package where the environment and the tested set disagree."""

    name: str
    installed: str | None  # None: not installed
    pinned: str | None  # None: installed but not in the tested set

    def describe(self) -> str:
        if self.installed is None:
            return f"{self.name} {self.pinned} is not installed"
        if self.pinned is None:
            return f"{self.name} {self.installed} is not in the tested set"
        return f"{self.name} {self.installed} (tested: {self.pinned})"


def compare(installed: dict[str, str], pinned: dict[str, str]) -> list[PinDifference]:
    """Every package whose installed version is not the pinned one, sorted by name."""
    names = (set(installed) | set(pinned)) - NOT_PINNED
    diffs = [PinDifference(n, installed.get(n), pinned.get(n)) for n in sorted(names)
             if installed.get(n) != pinned.get(n)]
    return diffs


def main(argv: list[str] | None = None) -> int:
    """``python -m ftpack.core.pins check [FILE]``: list the differences between this
    interpreter's packages and the tested set; exit 1 when there are any.
    ``--extras`` prints only the names installed but not pinned (for pip uninstall)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ftpack.core.pins")
    parser.add_argument("command", choices=["check"])
    parser.add_argument("file", nargs="?", type=Path, default=None)
    parser.add_argument("--extras", action="store_true")
    args = parser.parse_intermixed_args(argv)
    if args.file is not None:
        pinned = parse_pins(args.file.read_text(encoding="utf-8"))
    else:
        found = tested_set()
        if found is None:
            print(f"{PINNED_FILE} is missing from this installation")
            return 2
        pinned = found
    diffs = compare(installed_versions(), pinned)
    if args.extras:
        print(" ".join(d.name for d in diffs if d.pinned is None))
        return 0
    for d in diffs:
        print(d.describe())
    return 1 if diffs else 0


if __name__ == "__main__":
    raise SystemExit(main())
