"""Write requirements/pinned.txt, the tested set, from the environment this runs in.

    .venv-latest/bin/python scripts/pins.py freeze            # what scripts/latest.sh does
    .venv/bin/python scripts/pins.py extract llama-cpp-python  # one pin with its hashes
    .venv/bin/python scripts/pins.py matches                   # same Python and platform?

`freeze` pins every distribution this interpreter has (ftpack itself aside) to its
installed version, with the sha256 of every file PyPI holds for that version (all
platforms and Pythons, so pip's hash-checking mode accepts whichever wheel it picks).
Run it only from an environment the whole test suite has just passed in.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import re
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ftpack.core.pins import NOT_PINNED, PINNED_FILE, installed_versions, normalize, parse_pins  # noqa: E402

INDEX = "https://pypi.org/simple"
HEADER = """\
# The tested set: every package the whole test suite (scripts/test.sh) passed with, at
# exactly these versions. scripts/setup.sh installs exactly this set, in pip's
# hash-checking mode; `ftpack doctor` says when an installed version differs.
# Made by `scripts/latest.sh` (newest releases + the suite, then `scripts/pins.py freeze`).
# Do not edit by hand.
# Tested on: {python}, {system} {machine}; {date}.
"""


def _file_version(filename: str, name: str) -> str | None:
    """The version in a wheel or sdist file name of project ``name`` (None: not its file)."""
    stem = re.sub(r"\.(whl|tar\.gz|zip|tar\.bz2|tgz)$", "", filename)
    if stem == filename:
        return None
    parts = stem.split("-")
    # wheel: name-version(-build)?-py-abi-plat; sdist: name-version
    for i in range(1, len(parts)):
        if normalize("-".join(parts[:i])) == name:
            return parts[i]
    return None


def file_hashes(name: str, version: str, index: str = INDEX) -> list[str]:
    """sha256 of every file of ``name`` ``version`` on the index (PEP 691 JSON)."""
    req = urllib.request.Request(f"{index}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        files = json.load(resp)["files"]
    want = normalize(version)
    hashes = sorted({f["hashes"]["sha256"] for f in files
                     if "sha256" in f.get("hashes", {})
                     and (v := _file_version(f["filename"], name)) is not None and normalize(v) == want})
    if not hashes:
        raise SystemExit(f"{index} has no file of {name} {version}: cannot pin it with hashes")
    return hashes


def render(pins: dict[str, tuple[str, list[str]]]) -> str:
    lines = [HEADER.format(python=f"CPython {platform.python_version()}", system=platform.system(),
                           machine=platform.machine(), date=_dt.date.today().isoformat())]
    for name in sorted(pins):
        version, hashes = pins[name]
        lines.append(f"{name}=={version} \\\n" + " \\\n".join(f"    --hash=sha256:{h}" for h in hashes))
    return "\n".join(lines) + "\n"


def freeze(out: Path) -> None:
    installed = {n: v for n, v in installed_versions().items() if n not in NOT_PINNED}
    pins = {}
    for i, (name, version) in enumerate(sorted(installed.items()), 1):
        print(f"[{i}/{len(installed)}] {name}=={version}", file=sys.stderr)
        pins[name] = (version, file_hashes(name, version))
    text = render(pins)
    assert parse_pins(text).keys() == installed.keys()
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}: {len(pins)} packages")
    if out == ROOT / PINNED_FILE:
        n = update_lower_bounds(ROOT / "pyproject.toml", {k: v for k, (v, _) in pins.items()})
        print(f"pyproject.toml: {n} lower bounds moved to the tested versions")


def platform_key(python: str, system: str, machine: str) -> str:
    """What a tested set is valid for: the Python minor version, the OS and the CPU kind."""
    return f"{'.'.join(python.split('.')[:2])} {system} {machine}"


def matches(source: Path) -> bool:
    """Whether this interpreter is the kind the tested set was made on (say why not)."""
    m = re.search(r"^# Tested on: CPython (\S+), (\S+) (\S+);", source.read_text(encoding="utf-8"), re.M)
    here = platform_key(platform.python_version(), platform.system(), platform.machine())
    if m and platform_key(*m.groups()) == here:
        return True
    made = platform_key(*m.groups()) if m else "an unknown platform"
    print(f"the tested set was made on CPython {made}; this is CPython {here}", file=sys.stderr)
    return False


def update_lower_bounds(pyproject: Path, pins: dict[str, str]) -> int:
    """Rewrite every ``name>=X`` in pyproject.toml's dependency lists to the pinned version:
    the oldest release said to work is the one tested."""
    text = pyproject.read_text(encoding="utf-8")
    changed = 0

    def bump(m: re.Match) -> str:
        nonlocal changed
        version = pins.get(normalize(m.group(2)))
        if version is None or version == m.group(4):
            return m.group(0)
        changed += 1
        return f"{m.group(1)}{m.group(2)}{m.group(3)}{version}"

    text = re.sub(r'^(\s*")([A-Za-z0-9][A-Za-z0-9._-]*)(\s*>=\s*)([^",;\s]+)', bump, text, flags=re.M)
    tmp = pyproject.with_name(pyproject.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(pyproject)
    return changed


def extract(names: list[str], source: Path) -> None:
    """Print the pins of ``names`` (with their hash lines) from the tested set."""
    text = source.read_text(encoding="utf-8")
    wanted = {normalize(n) for n in names}
    found = set()
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==", block)
        if m and normalize(m.group(1)) in wanted:
            found.add(normalize(m.group(1)))
            print(block.rstrip())
    missing = wanted - found
    if missing:
        raise SystemExit(f"not in {source}: {', '.join(sorted(missing))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("freeze", help="pin this environment (run it only after a green suite)")
    f.add_argument("--out", type=Path, default=ROOT / PINNED_FILE)
    e = sub.add_parser("extract", help="print some pins with their hashes")
    e.add_argument("names", nargs="+")
    e.add_argument("--from", dest="source", type=Path, default=ROOT / PINNED_FILE)
    sub.add_parser("matches", help="exit 0 when this Python and platform are the tested set's")
    args = parser.parse_args()
    if args.command == "freeze":
        freeze(args.out)
    elif args.command == "matches":
        raise SystemExit(0 if matches(ROOT / PINNED_FILE) else 1)
    else:
        extract(args.names, args.source)


if __name__ == "__main__":
    main()
