"""``build.json``: what a build did, stage by stage.

The manifest holds the resolved config, and for each stage its status, input hash,
outputs (path, size, sha256), metrics, library versions and timings. Everything that
reads a finished build (the runner, the model card, `ftpack chat`, `ftpack list`)
reads it through :class:`Manifest`, never as raw JSON.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ftpack import __version__
from ftpack.core.atomic import sha256_file, write_json
from ftpack.core.errors import FtpackError

MANIFEST_NAME = "build.json"
MANIFEST_VERSION = 1


def required_libraries() -> dict[str, str]:
    """ftpack's runtime dependencies and their minimum versions: {distribution: minimum}.

    The one list is pyproject.toml's ``dependencies``: read from that file in a source
    checkout, else from ftpack's installed metadata. `ftpack doctor` checks these and
    every stage records their versions in build.json.
    """
    from importlib import metadata

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    if pyproject.is_file():
        from ftpack.core.config import toml_loads

        requirements = toml_loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    else:
        try:
            requirements = metadata.requires("ftpack") or []
        except metadata.PackageNotFoundError:  # pragma: no cover - neither installed nor a checkout
            requirements = []
    out: dict[str, str] = {}
    for req in requirements:
        if ";" in req:  # extras (tests) and markers (tomli on Python 3.10 only)
            continue
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:>=\s*([^,\s]+))?", req)
        if m:
            out[m.group(1).lower()] = m.group(2) or "0"
    return out


def library_versions(names: Iterable[str] | None = None) -> dict[str, str | None]:
    """Installed versions of ``names`` (default: :func:`required_libraries`), from package
    metadata: no heavy import."""
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version(), "ftpack": __version__}
    for n in (required_libraries() if names is None else names):
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class OutputRecord:
    """One finished file: where (relative to the build dir), how big, its sha256."""

    path: str
    bytes: int
    sha256: str
    mtime_ns: int

    def check(self, build_dir: Path) -> bool:
        """True when the file is still there and unchanged (rehash only if touched)."""
        p = build_dir / self.path
        try:
            st = p.stat()
        except OSError:
            return False
        if st.st_size != self.bytes:
            return False
        if st.st_mtime_ns == self.mtime_ns:
            return True
        return sha256_file(p) == self.sha256


@dataclass
class StageRecord:
    """What build.json says about one stage."""

    status: str = "pending"  # pending | running | done | failed | interrupted
    input_hash: str | None = None
    outputs: list[OutputRecord] = field(default_factory=list)
    main_output: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str | None] = field(default_factory=dict)
    started: str | None = None
    ended: str | None = None
    seconds: float | None = None
    error: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StageRecord":
        d = dict(d)
        d["outputs"] = [OutputRecord(**o) for o in d.get("outputs", [])]
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def is_complete(self, build_dir: Path) -> bool:
        return self.status == "done" and all(o.check(build_dir) for o in self.outputs)

    def outputs_digest(self) -> str:
        h = hashlib.sha256()
        for o in sorted(self.outputs, key=lambda o: o.path):
            h.update(f"{o.path}\0{o.sha256}\n".encode())
        return h.hexdigest()


@dataclass
class Manifest:
    """The whole ``build.json``: config, inputs, and one record per stage."""

    path: Path
    name: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, StageRecord] = field(default_factory=dict)
    created: str | None = None
    updated: str | None = None

    @property
    def build_dir(self) -> Path:
        return self.path.parent

    @classmethod
    def load(cls, build_dir: Path) -> "Manifest":
        path = Path(build_dir) / MANIFEST_NAME
        if not path.exists():
            return cls(path=path, created=now_iso())
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(path=path, name=raw.get("name", ""), config=raw.get("config", {}),
                       stages={k: StageRecord.from_dict(v) for k, v in raw.get("stages", {}).items()},
                       created=raw.get("created"), updated=raw.get("updated"))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:  # AttributeError: not a JSON object
            raise FtpackError(f"{path} is damaged ({exc}).",
                              "Delete it to start this build over, or use another --out.") from None

    def save(self) -> None:
        self.updated = now_iso()
        write_json(self.path, {
            "manifest_version": MANIFEST_VERSION,
            "name": self.name,
            "created": self.created,
            "updated": self.updated,
            "config": self.config,
            "stages": {k: asdict(v) for k, v in self.stages.items()},
        })


