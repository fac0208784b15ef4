"""Crash-safe file output: write under a temporary name, rename when complete.

A process killed mid-write (even with SIGKILL) leaves only ``*.partial*`` names behind,
never a file or folder that looks finished. The next run removes stale partials.

Folders ftpack writes carry a small marker file (:data:`OUTPUT_MARK`), so ftpack only
ever replaces folders it wrote itself: ``ftpack merge -o ~/models`` must never wipe a
folder of the user's, nor one that holds the inputs being read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator

from ftpack.core.errors import FtpackError, bad_input

PARTIAL_MARK = ".partial"
#: Marker file inside every folder :func:`atomic_dir` writes: "ftpack made this, may replace it".
OUTPUT_MARK = ".ftpack-output"
_MARK_TEXT = '{"created_by": "ftpack", "note": "ftpack may replace this folder (e.g. with --overwrite)"}\n'


def partial_name(path: Path) -> Path:
    """The temporary sibling of ``path`` (same folder, so the rename is atomic)."""
    return path.with_name(f"{path.name}{PARTIAL_MARK}-{os.getpid()}")


def is_partial(path: Path) -> bool:
    return PARTIAL_MARK + "-" in path.name


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write a file to; rename it to ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(path)
    try:
        yield tmp
        if tmp.exists():
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def is_ftpack_output(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder ftpack wrote (it carries :data:`OUTPUT_MARK`)."""
    return (Path(path) / OUTPUT_MARK).is_file()


def check_output_dir(path: str | os.PathLike, *, overwrite: bool = True,
                     inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse an output folder whose replacement would lose data (exit code 2).

    Fine: a missing or empty folder, or an earlier ftpack output when ``overwrite``.
    Refused: a file or link, a non-empty folder ftpack did not write, and any folder
    that is or contains one of ``inputs`` (even an ftpack output, even with ``overwrite``).
    """
    path = Path(path)
    resolved = path.resolve()
    for item in inputs:
        source = Path(item).resolve()
        if source == resolved or resolved in source.parents:
            raise bad_input(f"The output folder {path} holds the input {item}; writing there would delete it.",
                            "Choose an output folder outside the input folders.")
    if path.is_symlink():
        raise bad_input(f"The output {path} is a symbolic link; ftpack will not replace it.",
                        "Choose a new or empty folder for the output.")
    if not path.exists():
        return
    if not path.is_dir():
        raise bad_input(f"The output {path} exists and is a file, not a folder.",
                        "Choose a new or empty folder for the output.")
    if not any(path.iterdir()):
        return
    if not is_ftpack_output(path):
        raise bad_input(f"The output folder {path} already exists and holds files ftpack did not write; "
                        "ftpack will not replace it.",
                        "Choose a new or empty folder for the output.")
    if not overwrite:
        raise bad_input(f"The output folder {path} holds an earlier ftpack output.",
                        "Pass --overwrite to replace it, or choose another folder.")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = True,
               inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a temporary folder to fill; it replaces ``path`` as a whole on success.

    ``path`` may only be missing, empty, or an earlier ftpack output (replaced only when
    ``overwrite``); see :func:`check_output_dir`, which runs before and after the work.
    The new folder carries :data:`OUTPUT_MARK`.
    """
    path = Path(path)
    check_output_dir(path, overwrite=overwrite, inputs=inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    (tmp / OUTPUT_MARK).write_text(_MARK_TEXT, encoding="utf-8")
    try:
        yield tmp
        check_output_dir(path, overwrite=overwrite, inputs=inputs)  # nothing appeared meanwhile
        old = None
        if path.exists():
            old = path.with_name(f"{path.name}{PARTIAL_MARK}-old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if needed), so parallel processes (e.g.
    torchrun ranks) do a one-time job once; released when the block ends."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_json(path: str | os.PathLike, obj: object) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def remove_stale_partials(folder: str | os.PathLike) -> list[Path]:
    """Delete leftovers of killed writers below ``folder``; return what was removed."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.exists():
        return removed
    for p in sorted(folder.rglob(f"*{PARTIAL_MARK}-*"), key=lambda q: len(q.parts), reverse=True):
        if not p.exists():
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (files here can be many GB)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_free_space(folder: str | os.PathLike, needed: int, what: str) -> None:
    """Fail early, before writing, when ``folder`` lacks ``needed`` bytes."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise FtpackError(
            f"Not enough disk space for {what}: needs {human_bytes(needed)}, "
            f"{human_bytes(free)} free in {probe}.",
            "Free some space or choose another output folder (--out).",
        )


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover
