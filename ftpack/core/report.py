"""The one place that prints.

Three modes: ``rich`` (headers, progress bars with ETA, tables), ``json`` (one JSON
object per event on stdout, for scripts) and ``quiet`` (errors and the final line
only). Library code calls :func:`get_reporter` and never prints by itself.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

MODES = ("rich", "json", "quiet")


@dataclass
class ProgressHandle:
    """What a long job updates; the reporter decides how (and whether) to show it."""

    description: str
    total: float | None
    unit: str
    _reporter: "Reporter"
    completed: float = 0.0
    fields: dict[str, Any] = field(default_factory=dict)
    _task: Any = None
    _started: float = field(default_factory=time.monotonic)
    _last_plain: float = 0.0

    def advance(self, n: float = 1, **fields: Any) -> None:
        self.update(self.completed + n, **fields)

    def update(self, completed: float, total: float | None = None, **fields: Any) -> None:
        self.completed = completed
        if total is not None:
            self.total = total
        self.fields.update(fields)
        self._reporter._progress_update(self)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started


class Reporter:
    """Formats every user-visible line; created once per CLI run."""

    def __init__(self, mode: str = "rich", *, out=None, err=None, force_terminal: bool | None = None):
        if mode not in MODES:
            raise ValueError(f"unknown reporter mode {mode!r}")
        self.mode = mode
        self._out_given = out
        self._err_given = err
        self._force_terminal = force_terminal
        self._console = None
        self._err_console = None
        self._progress = None  # rich.progress.Progress while a bar is live

    @property
    def _out(self):  # resolved at use: CliRunner and pytest swap sys.stdout
        return self._out_given if self._out_given is not None else sys.stdout

    @property
    def _err(self):
        return self._err_given if self._err_given is not None else sys.stderr

    # -- consoles (rich imported lazily: `ftpack --help` stays instant) ---------------
    @property
    def console(self):
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self._out_given, force_terminal=self._force_terminal,
                                    highlight=False, soft_wrap=False, width=_log_width(self._out))
        return self._console

    @property
    def err_console(self):
        if self._err_console is None:
            from rich.console import Console

            self._err_console = Console(file=self._err_given, stderr=self._err_given is None, force_terminal=self._force_terminal,
                                        highlight=False, width=_log_width(self._err))
        return self._err_console

    @property
    def is_terminal(self) -> bool:
        return self.mode == "rich" and self.console.is_terminal

    # -- events ---------------------------------------------------------------------
    def event(self, kind: str, **data: Any) -> None:
        """Emit a machine-readable event (only visible in --json mode)."""
        if self.mode == "json":
            self._out.write(json.dumps({"event": kind, **data}, default=str, ensure_ascii=False) + "\n")
            self._out.flush()

    def stage_start(self, stage: str, description: str = "") -> None:
        self.event("stage_start", stage=stage, description=description)
        if self.mode == "rich":
            from rich.rule import Rule

            title = f"[bold cyan]{stage}[/]" + (f" · {description}" if description else "")
            self.console.print(Rule(title, align="left", style="cyan"))

    def stage_end(self, stage: str, status: str, seconds: float, **data: Any) -> None:
        self.event("stage_end", stage=stage, status=status, seconds=round(seconds, 3), **data)
        if self.mode == "rich":
            style = {"done": "green", "skipped": "yellow"}.get(status, "red")
            self.console.print(f"[{style}]{stage}: {status}[/] in {seconds:.1f}s")

    def info(self, message: str, **data: Any) -> None:
        self.event("info", message=message, **data)
        if self.mode == "rich":
            self.console.print(message, markup=False)

    def warn(self, message: str, hint: str | None = None) -> None:
        self.event("warning", message=message, hint=hint)
        if self.mode == "rich":
            self.err_console.print(f"[yellow]warning:[/] {_esc(message)}")
            if hint:
                self.err_console.print(f"  [dim]hint: {_esc(hint)}[/]")

    def error(self, message: str, hint: str | None = None) -> None:
        """Errors are shown in every mode, on stderr (and as an event in --json)."""
        self.event("error", message=message, hint=hint)
        if self.mode == "json":
            return
        self.err_console.print(f"[bold red]error:[/] [red]{_esc(message)}[/]")
        if hint:
            self.err_console.print(f"[dim]hint:[/] {_esc(hint)}")

    def final(self, message: str, **data: Any) -> None:
        """The last line of a command: printed in rich and quiet mode, an event in json."""
        self.event("final", message=message, **data)
        if self.mode == "json":
            return
        self.console.print(message, markup=False)

    def tokens(self, record: int, text: str, pieces: Sequence[str], input_ids: Sequence[int],
               train: Sequence[int]) -> None:
        """One record as trained on: in --json the object ``{text, input_ids, train}``; in a
        terminal the tokens, those that carry loss in green, the others dimmed."""
        self.event("tokens", record=record, text=text, input_ids=list(input_ids), train=list(train))
        if self.mode != "rich":
            return
        from rich.text import Text

        line = Text(f"record {record}: {len(input_ids)} tokens, {sum(train)} trained\n", style="bold")
        for piece, ids_, on in zip(pieces, input_ids, train):
            line.append(piece.replace("\n", "\\n"), style="green" if on else "dim")
            line.append("|", style="blue")
        self.console.print(line)

    def result(self, data: Any) -> None:
        """A command's structured result: the JSON object in --json, nothing otherwise."""
        self.event("result", data=data)

    def table(self, title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]],
              *, data: Any = None) -> None:
        """A table in rich mode; in json mode an event with the rows (or ``data``)."""
        if self.mode == "json":
            payload = data if data is not None else [dict(zip(columns, r)) for r in rows]
            self.event("table", title=title, rows=payload)
            return
        if self.mode != "rich":
            return
        from rich.table import Table

        t = Table(title=title, title_justify="left", show_lines=False)
        for c in columns:
            t.add_column(c)
        for r in rows:
            t.add_row(*[x if hasattr(x, "__rich__") else _esc(str(x)) for x in r])
        self.console.print(t)

    # -- progress -------------------------------------------------------------------
    @contextlib.contextmanager
    def progress(self, description: str, total: float | None = None, unit: str = "steps") -> Iterator[ProgressHandle]:
        """A progress bar with ETA (terminal), periodic plain lines (logs) or events (json)."""
        handle = ProgressHandle(description, total, unit, self)
        self.event("progress_start", description=description, total=total, unit=unit)
        if self.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn,
                                       TextColumn, TimeElapsedColumn, TimeRemainingColumn)

            self._progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                MofNCompleteColumn(), TextColumn(unit), TimeElapsedColumn(), TextColumn("eta"),
                TimeRemainingColumn(), TextColumn("{task.fields[extra]}"),
                console=self.console, transient=False,
            )
            self._progress.start()
            handle._task = self._progress.add_task(description, total=total, extra="")
        try:
            yield handle
        finally:
            if self._progress is not None:
                self._progress.stop()
                self._progress = None
            self.event("progress_end", description=description, completed=handle.completed,
                       total=handle.total, seconds=round(handle.elapsed, 3), **handle.fields)
            if self.mode == "rich" and not self.is_terminal:
                self._plain_progress_line(handle, final=True)

    def _progress_update(self, h: ProgressHandle) -> None:
        if self.mode == "json":
            self.event("progress", description=h.description, completed=h.completed,
                       total=h.total, **h.fields)
        elif self._progress is not None and h._task is not None:
            extra = "  ".join(f"{k}={_fmt(v)}" for k, v in h.fields.items())
            self._progress.update(h._task, completed=h.completed, total=h.total, extra=extra)
        elif self.mode == "rich":
            now = time.monotonic()
            if now - h._last_plain >= 10 or h._last_plain == 0.0:
                h._last_plain = now
                self._plain_progress_line(h)

    def _plain_progress_line(self, h: ProgressHandle, final: bool = False) -> None:
        parts = [f"  {h.description}: {_fmt(h.completed)}"]
        if h.total:
            parts[0] += f"/{_fmt(h.total)} {h.unit} ({100 * h.completed / h.total:.0f}%)"
            if not final and h.completed:
                eta = h.elapsed * (h.total - h.completed) / h.completed
                parts.append(f"eta {eta:.0f}s")
        else:
            parts[0] += f" {h.unit}"
        parts.append(f"elapsed {h.elapsed:.0f}s")
        parts += [f"{k}={_fmt(v)}" for k, v in h.fields.items()]
        self.console.print("  ".join(parts), markup=False)


def _log_width(stream) -> int | None:
    """Wide lines in logs (CI): rich's 80-column default wraps tables badly there."""
    import os

    isatty = getattr(stream, "isatty", lambda: False)
    if os.environ.get("COLUMNS") or isatty():
        return None
    return 120


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _esc(text: str) -> str:
    from rich.markup import escape

    return escape(text)


_current: Reporter | None = None


def get_reporter() -> Reporter:
    """The reporter of this run (a rich one when no CLI set it up, e.g. in a notebook)."""
    global _current
    if _current is None:
        _current = Reporter("rich")
    return _current


def set_reporter(reporter: Reporter | None) -> None:
    global _current
    _current = reporter


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """Drop everything reported inside the block (for helper work whose notes would mislead,
    e.g. a vocab-only GGUF written with the model converter's warnings)."""
    import io

    previous = _current
    set_reporter(Reporter("quiet", out=io.StringIO(), err=io.StringIO()))
    try:
        yield
    finally:
        set_reporter(previous)
