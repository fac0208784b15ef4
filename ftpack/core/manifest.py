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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ftpack import __version__
from ftpack.core.atomic import sha256_file, write_json
from ftpack.core.errors import FtpackError

MANIFEST_NAME = "build.json"
MANIFEST_VERSION = 1
TRACKED_LIBRARIES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes",
                     "gguf", "llama-cpp-python", "ollama", "rich", "click", "jinja2", "sentencepiece",
                     "tokenizers", "safetensors")


def library_versions(names: Iterable[str] = TRACKED_LIBRARIES) -> dict[str, str | None]:
    """Installed versions (from package metadata: no heavy import)."""
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version(), "ftpack": __version__}
    for n in names:
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


