"""The reporter: rich, plain-log, quiet and JSON output of the same events."""

from __future__ import annotations

import io
import json

from ftpack.core.report import Reporter


def _drive(r: Reporter) -> None:
    r.stage_start("train", "fine-tune")
    with r.progress("training", total=4, unit="steps") as p:
        for i in range(4):
            p.advance(1, loss=1.0 / (i + 1))
    r.info("saved adapter")
    r.warn("eval split is empty", "add more records")
    r.table("summary", ("stage", "status"), [("train", "done")])
    r.stage_end("train", "done", 1.5)
    r.error("disk full", "free space")
    r.final("Done. Try it: ollama run x")


def test_json_mode_is_one_object_per_line():
    out, err = io.StringIO(), io.StringIO()
    _drive(Reporter("json", out=out, err=err))
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "stage_start" and kinds[-1] == "final"
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["completed"] for e in progress] == [1, 2, 3, 4]
    assert progress[-1]["loss"] == 0.25
    assert {"event": "error", "message": "disk full", "hint": "free space"} in events
    assert err.getvalue() == ""


def test_quiet_mode_prints_only_errors_and_final_line():
    out, err = io.StringIO(), io.StringIO()
    _drive(Reporter("quiet", out=out, err=err))
    assert out.getvalue().strip() == "Done. Try it: ollama run x"
    assert "disk full" in err.getvalue() and "warning" not in err.getvalue()


def test_rich_mode_without_terminal_stays_readable():
    out, err = io.StringIO(), io.StringIO()
    _drive(Reporter("rich", out=out, err=err))
    text = out.getvalue()
    assert "\x1b[" not in text  # no escape codes in logs
    assert "train" in text and "fine-tune" in text
    assert "training: 4/4 steps (100%)" in text  # a plain final progress line
    assert "saved adapter" in text and "Done. Try it: ollama run x" in text
    assert "eval split is empty" in err.getvalue() and "hint: add more records" in err.getvalue()
