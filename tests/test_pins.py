"""The tested set (requirements/pinned.txt): installed exactly, every package hash-pinned,
pyproject's lower bounds equal to it, and `ftpack doctor` naming any drift."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from ftpack.commands import doctor
from ftpack.core import pins

ROOT = Path(__file__).resolve().parents[1]
PINNED = ROOT / pins.PINNED_FILE


def _pinned() -> dict[str, str]:
    return pins.parse_pins(PINNED.read_text(encoding="utf-8"))


def test_every_package_is_pinned_exactly_with_hashes():
    text = PINNED.read_text(encoding="utf-8")
    pinned = _pinned()
    hashes = pins.pinned_hashes(text)
    assert len(pinned) > 50  # the whole environment, not only the direct dependencies
    for name in ("torch", "transformers", "trl", "peft", "llama-cpp-python", "pytest", "huggingface-hub"):
        assert name in pinned, name
    assert all(hashes[n] for n in pinned), [n for n in pinned if not hashes[n]]
    assert "ftpack" not in pinned


def test_parse_refuses_a_range_or_a_missing_version():
    assert pins.parse_pins("a-b==1.0 \\\n    --hash=sha256:" + "0" * 64 + "\n# c\n") == {"a-b": "1.0"}
    for bad in ("torch>=2.4\n", "torch\n", "torch==2.4; python_version<'3'\n"):
        with pytest.raises(ValueError):
            pins.parse_pins(bad)


def test_this_environment_holds_exactly_the_tested_set():
    """What scripts/setup.sh promises: every pinned package at its version, nothing else."""
    import os

    if sys.prefix == sys.base_prefix:
        pytest.skip("not in a virtual environment made by scripts/setup.sh")
    if os.environ.get("FTPACK_UNPINNED"):
        pytest.skip("scripts/latest.sh: this environment holds the newest releases, not the pins")
    # Importing setuptools (torch's compile path does) puts setuptools/_vendor's metadata on
    # sys.path; pip never installed those packages, so they must not count.
    import setuptools  # noqa: F401

    differ = pins.compare(pins.installed_versions(), _pinned())
    assert not differ, [d.describe() for d in differ]


def test_compare_names_each_kind_of_difference():
    diffs = pins.compare({"torch": "2.15.0", "extra-pkg": "1.0", "ftpack": "0.9", "same": "1"},
                         {"torch": "2.14.1", "missing-pkg": "2.0", "same": "1"})
    assert [d.describe() for d in diffs] == [
        "extra-pkg 1.0 is not in the tested set", "missing-pkg 2.0 is not installed",
        "torch 2.15.0 (tested: 2.14.1)"]


def test_pyproject_lower_bounds_are_the_tested_versions():
    """The oldest versions the code is said to support are the ones it was tested with."""
    from ftpack.core.config import toml_loads

    project = toml_loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pinned = _pinned()
    reqs = project["dependencies"] + project["optional-dependencies"]["test"]
    checked = 0
    for req in reqs:
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*>=\s*([^,;\s]+)", req)
        assert m, f"{req!r} has no lower bound"
        name = pins.normalize(m.group(1))
        if ";" in req and name not in pinned:  # a marker for another Python (tomli on 3.10)
            continue
        assert pinned[name] == m.group(2), f"{req!r}: the tested set has {name}=={pinned[name]}"
        checked += 1
    assert checked >= 20


def test_doctor_names_a_version_that_differs(monkeypatch):
    pinned = _pinned()
    installed = dict(pinned)
    installed["transformers"] = "99.0.0"
    installed["not-pinned-user-package"] = "1.0"
    monkeypatch.setattr(pins, "installed_versions", lambda: installed)
    row = doctor.check_tested_set()
    assert row.status == doctor.WARN
    assert f"transformers 99.0.0 (tested: {pinned['transformers']})" in row.value
    assert "not-pinned-user-package" not in row.value
    assert "scripts/setup.sh" in row.hint and f"transformers=={pinned['transformers']}" in row.hint
    monkeypatch.setattr(pins, "installed_versions", lambda: dict(pinned))
    assert doctor.check_tested_set().status == doctor.OK


def test_llama_cpp_is_built_from_the_pinned_version():
    """scripts/llama_cpp.sh builds the pinned sdist, hash-checked: extract gives it."""
    import subprocess

    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "pins.py"), "extract", "llama-cpp-python"],
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith(f"llama-cpp-python=={_pinned()['llama-cpp-python']} \\")
    assert pins.pinned_hashes(out)["llama-cpp-python"] == pins.pinned_hashes(PINNED.read_text())["llama-cpp-python"]
