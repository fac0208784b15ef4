"""The stage runner: run a pipeline's stages in order, skipping what is already done.

A stage is a function ``run(ctx) -> StageResult``. The runner hashes what a stage
reads (its slice of the config, the files it names, and the records of the stages it
depends on); when ``build.json`` holds a finished record with the same hash whose
outputs still exist unchanged, the stage is skipped. Outputs are written under
temporary names and renamed when complete (:mod:`ftpack.core.atomic`), so a killed stage
leaves nothing that looks finished and the next run redoes exactly that stage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from ftpack.core.atomic import remove_stale_partials, sha256_file
from ftpack.core.config import config_to_dict, stage_slice
from ftpack.core.errors import FtpackError, bad_input
from ftpack.core.layout import BuildLayout
from ftpack.core.manifest import Manifest, OutputRecord, StageRecord, library_versions, now_iso
from ftpack.core.report import Reporter, get_reporter

@dataclass
class StageResult:
    """What a stage returns: its output files or folders, and figures worth keeping."""

    outputs: list[Path]
    main_output: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    """Everything a stage may use: the config, its folder, upstream records, the reporter."""

    config: Any
    build_dir: Path
    stage: str
    manifest: Manifest
    reporter: Reporter

    @property
    def layout(self) -> BuildLayout:
        return BuildLayout(self.build_dir)

    @property
    def stage_dir(self) -> Path:
        d = self.build_dir / self.stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def upstream(self, stage: str) -> StageRecord:
        rec = self.manifest.stages.get(stage)
        if rec is None or rec.status != "done":
            raise FtpackError(f"Stage {stage!r} has not finished in {self.build_dir}.",
                              f"Run the build again without skipping {stage!r}.")
        return rec

    def upstream_path(self, stage: str) -> Path:
        """The main output of a finished upstream stage."""
        rec = self.upstream(stage)
        if rec.main_output is None:
            raise FtpackError(f"Stage {stage!r} recorded no main output.")
        return self.build_dir / rec.main_output


@dataclass
class Stage:
    """A pipeline step: its name, work, and what its input hash covers."""

    name: str
    description: str
    run: Callable[[StageContext], StageResult]
    depends: tuple[str, ...] | None = None  # None: the previous stage in the pipeline
    input_files: Callable[[Any], Sequence[Path | None]] = lambda cfg: ()
    config_keys: Callable[[Any], dict[str, Any]] | None = None  # default: config.stage_slice
    enabled: Callable[[Any], bool] = lambda cfg: True


def input_hash(stage: Stage, cfg: Any, manifest: Manifest, depends: Sequence[str]) -> str:
    """Hash of the config slice, the named input files and the upstream records."""
    slice_ = stage.config_keys(cfg) if stage.config_keys else stage_slice(cfg, stage.name)
    files = {}
    for p in stage.input_files(cfg):
        if p is None:
            continue
        p = Path(p)
        if p.is_file():
            files[str(p)] = sha256_file(p)
        elif p.is_dir():
            files[str(p)] = _dir_digest(p)
        else:
            files[str(p)] = None
    upstream = {}
    for d in depends:
        rec = manifest.stages.get(d)
        upstream[d] = None if rec is None else [rec.input_hash, rec.outputs_digest()]
    blob = json.dumps({"stage": stage.name, "config": slice_, "files": files, "upstream": upstream},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _dir_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(f"{p.relative_to(folder)}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


def record_outputs(build_dir: Path, paths: Iterable[Path]) -> list[OutputRecord]:
    """Describe output files (folders are expanded into their files)."""
    recs: list[OutputRecord] = []
    for p in paths:
        p = Path(p)
        if not p.is_absolute():
            p = build_dir / p
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        if not p.exists():
            raise FtpackError(f"Stage output {p} was not written.")
        for f in files:
            st = f.stat()
            recs.append(OutputRecord(path=str(f.relative_to(build_dir)), bytes=st.st_size,
                                     sha256=sha256_file(f), mtime_ns=st.st_mtime_ns))
    return recs


@contextlib.contextmanager
def build_lock(build_dir: Path) -> Iterator[None]:
    """One run per build dir at a time (a second one fails fast instead of corrupting)."""
    import fcntl

    build_dir.mkdir(parents=True, exist_ok=True)
    fh = open(build_dir / ".lock", "w")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FtpackError(f"Another ftpack run is using {build_dir}.",
                              "Wait for it to finish, or use another --out.") from None
        yield
    finally:
        fh.close()


def run_stages(cfg: Any, stages: Sequence[Stage], build_dir: Path, *, force: str | None = None,
               reporter: Reporter | None = None) -> Manifest:
    """Run the enabled stages in order, skipping those already done with the same inputs.

    ``force`` names a stage: it and every later stage run again.
    """
    reporter = reporter or get_reporter()
    build_dir = Path(build_dir).absolute()  # stages may chdir or hand back cwd-relative paths
    names = [s.name for s in stages]
    if force is not None and force not in names:
        raise bad_input(f"--force: unknown stage {force!r}.", f"Stages: {', '.join(names)}.")
    with build_lock(build_dir):
        for p in remove_stale_partials(build_dir):
            reporter.event("removed_partial", path=str(p))
        manifest = Manifest.load(build_dir)
        manifest.name = cfg.name
        manifest.config = config_to_dict(cfg)
        forcing = False
        previous: str | None = None
        for stage in stages:
            if not stage.enabled(cfg):
                continue
            depends = stage.depends if stage.depends is not None else ((previous,) if previous else ())
            previous = stage.name
            forcing = forcing or stage.name == force
            h = input_hash(stage, cfg, manifest, depends)
            rec = manifest.stages.get(stage.name)
            if not forcing and rec is not None and rec.input_hash == h and rec.is_complete(build_dir):
                reporter.stage_end(stage.name, "skipped", 0.0, reason="up to date",
                                   output=rec.main_output)
                continue
            _run_one(stage, cfg, build_dir, manifest, h, reporter)
        manifest.save()
    return manifest


def _run_one(stage: Stage, cfg: Any, build_dir: Path, manifest: Manifest, h: str, reporter: Reporter) -> None:
    rec = StageRecord(status="running", input_hash=h, started=now_iso(), versions=library_versions())
    manifest.stages[stage.name] = rec
    manifest.save()
    reporter.stage_start(stage.name, stage.description)
    t0 = time.monotonic()
    ctx = StageContext(config=cfg, build_dir=build_dir, stage=stage.name, manifest=manifest,
                       reporter=reporter)
    try:
        result = stage.run(ctx)
        rec.outputs = record_outputs(build_dir, result.outputs)
        main = result.main_output or (result.outputs[0] if result.outputs else None)
        if main is not None:
            main = Path(main)
            rec.main_output = str(main.relative_to(build_dir) if main.is_absolute() else main)
        rec.metrics = result.metrics
        rec.status = "done"
    except KeyboardInterrupt:
        rec.status = "interrupted"
        raise
    except BaseException as exc:
        rec.status = "failed"
        rec.error = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        raise
    finally:
        rec.ended = now_iso()
        rec.seconds = round(time.monotonic() - t0, 3)
        manifest.save()
        if rec.status != "done":
            reporter.stage_end(stage.name, rec.status, rec.seconds)
    size = sum(o.bytes for o in rec.outputs if rec.main_output and o.path.startswith(rec.main_output))
    reporter.stage_end(stage.name, "done", rec.seconds, output=rec.main_output, bytes=size)


def summary_rows(manifest: Manifest) -> list[tuple[str, str, str, str, str]]:
    """(stage, status, seconds, main output, size) for the final table."""
    from ftpack.core.atomic import human_bytes

    rows = []
    for name, rec in manifest.stages.items():
        size = sum(o.bytes for o in rec.outputs if rec.main_output and o.path.startswith(rec.main_output))
        rows.append((name, rec.status, f"{rec.seconds:.1f}" if rec.seconds is not None else "-",
                     rec.main_output or "-", human_bytes(size) if size else "-"))
    return rows


def report_summary(manifest: Manifest, reporter: Reporter | None = None) -> None:
    """The final table: stage, status, seconds, main output, size."""
    reporter = reporter or get_reporter()
    reporter.table("Build summary", ("stage", "status", "seconds", "output", "size"), summary_rows(manifest))
