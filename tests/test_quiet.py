"""core/quiet.py: library chatter hidden inside quiet_libraries, shown with --debug, and
every setting restored afterwards."""

from __future__ import annotations

import logging
import os
import sys
import warnings

import pytest

from ftpack.core.quiet import debug_enabled, quiet_libraries, set_debug


@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    monkeypatch.delenv("FTPACK_DEBUG", raising=False)


def _chatter() -> None:
    logging.getLogger("bitsandbytes.backends.cpu.ops").warning("Please `pip install kernels`")
    warnings.warn("`is_gradient_checkpointing` is deprecated", FutureWarning)


def _logged(caplog) -> str:
    return " ".join(r.getMessage() for r in caplog.records)


def test_library_logs_and_warnings_are_hidden_then_restored(caplog, recwarn):
    level = logging.getLogger("bitsandbytes").level
    with quiet_libraries():
        _chatter()
    assert "kernels" not in _logged(caplog) and not recwarn.list
    assert logging.getLogger("bitsandbytes").level == level
    _chatter()  # outside the block, as before
    assert "kernels" in _logged(caplog) and len(recwarn.list) == 1


def test_debug_shows_everything(capsys, caplog, recwarn):
    set_debug(True)
    try:
        assert debug_enabled() and os.environ["FTPACK_DEBUG"] == "1"  # child processes inherit it
        with quiet_libraries(stderr=True):
            _chatter()
            print("from C or tqdm", file=sys.stderr)
    finally:
        set_debug(False)
    assert not debug_enabled()
    assert "from C or tqdm" in capsys.readouterr().err
    assert "kernels" in _logged(caplog) and len(recwarn.list) == 1


def test_user_exported_debug_is_kept(monkeypatch):
    monkeypatch.setenv("FTPACK_DEBUG", "1")
    set_debug(False)  # a CLI run without --debug must not undo what the user exported
    assert debug_enabled()


def test_stderr_is_parked_and_replayed_only_on_failure(capfd):
    with quiet_libraries(stderr=True):
        print("python-level bar", file=sys.stderr)
        os.write(2, b"fd-level log line\n")
    assert capfd.readouterr().err == ""
    with pytest.raises(RuntimeError):
        with quiet_libraries(stderr=True):
            os.write(2, b"context of the failure\n")
            raise RuntimeError("boom")
    assert "context of the failure" in capfd.readouterr().err
    print("after", file=sys.stderr)  # stderr works again
    assert "after" in capfd.readouterr().err


def test_a_library_ftpack_never_heard_of_stays_hidden(capfd, caplog):
    """Quiet mode works by level, not by a list of known loggers or messages: a new
    library's logger, set to DEBUG with a handler of its own (as transformers' is) and not
    propagating, logs a warning nobody has seen before; it stays hidden. An error still
    shows, and the logger works as before once the block ends."""
    name = "brand_new_library_2031.hub.trust"
    lg = logging.getLogger(name)
    handler = logging.StreamHandler(sys.stderr)
    lg.addHandler(handler)
    lg.setLevel(logging.DEBUG)
    lg.propagate = False
    try:
        with quiet_libraries():
            lg.warning("Skipping the publisher trust check for 'kernels-community/x' (offline)")
            lg.info("an info line")
            lg.error("a real error")
        err = capfd.readouterr().err
        assert "publisher trust" not in err and "info line" not in err
        assert "a real error" in err
        lg.warning("after the block")
        assert "after the block" in capfd.readouterr().err
        assert logging.root.manager.disable == logging.NOTSET
    finally:
        lg.removeHandler(handler)
        lg.propagate = True
        lg.setLevel(logging.NOTSET)
