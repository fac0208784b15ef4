"""Keep library chatter off the user's screen; ``--debug`` lets all of it through.

torch, transformers, TRL, PEFT, datasets, accelerate, bitsandbytes and llama.cpp talk
through four channels: Python warnings (torch's "gemv_4bit has no autograd kernel",
renamed-argument notes), the ``logging`` module (bitsandbytes' "pip install kernels" note,
transformers' advisory warnings), tqdm progress bars, and C code writing to the stderr
file descriptor. :func:`quiet_libraries` closes them for one block and restores every
setting afterwards. ftpack's own output goes through the Reporter and is never hidden;
what ftpack needs a user to know (an error, a real problem) it says itself.

With ``--debug`` (:func:`set_debug`, or ``FTPACK_DEBUG=1`` in the environment, which
child processes inherit) nothing is hidden.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from typing import Iterator

#: Loggers of the libraries ftpack drives; their notes are for library developers.
LIBRARY_LOGGERS = ("transformers", "datasets", "huggingface_hub", "peft", "trl", "accelerate",
                   "bitsandbytes", "torch", "gguf", "tokenizers", "httpx", "urllib3", "filelock")

_DEBUG_ENV = "FTPACK_DEBUG"
_exported = False  # whether set_debug put _DEBUG_ENV into the environment


def set_debug(on: bool) -> None:
    """``--debug`` (or not) for this invocation: show every library message, in child
    processes too. Turning it off undoes only what an earlier call did, never a
    ``FTPACK_DEBUG=1`` the user exported."""
    global _exported
    if on:
        _exported = _exported or os.environ.get(_DEBUG_ENV) is None
        os.environ[_DEBUG_ENV] = "1"
    elif _exported:
        os.environ.pop(_DEBUG_ENV, None)
        _exported = False


def debug_enabled() -> bool:
    return os.environ.get(_DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def quiet_libraries(*, native: bool = False) -> Iterator[None]:
    """Silence library warnings, logs below ERROR and progress bars inside the block.

    ``native=True`` also parks what C code writes to file descriptor 2 (llama.cpp's log,
    ggml's notes) in a temporary file; it is replayed to stderr when the block raises,
    so an error keeps its context. Python's ``sys.stderr`` keeps reaching the terminal.
    """
    if debug_enabled():
        yield
        return
    import warnings

    with contextlib.ExitStack() as stack:
        stack.enter_context(_loggers_at(logging.ERROR))
        stack.enter_context(_progress_bars_off())
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")  # ftpack itself never warns through `warnings`
        if native:
            stack.enter_context(_native_stderr_parked())
        yield


@contextlib.contextmanager
def _loggers_at(level: int) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        if lg.getEffectiveLevel() < level:
            lg.setLevel(level)
    try:
        yield
    finally:
        for lg, old in zip(loggers, saved):
            lg.setLevel(old)


@contextlib.contextmanager
def _progress_bars_off() -> Iterator[None]:
    """tqdm bars of transformers, huggingface_hub and datasets (when already imported:
    importing a library just to silence it would cost seconds)."""
    restore = []
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        if hf_logging.is_progress_bar_enabled():
            hf_logging.disable_progress_bar()
            restore.append(hf_logging.enable_progress_bar)
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

        if not are_progress_bars_disabled():
            disable_progress_bars()
            restore.append(enable_progress_bars)
    if "datasets" in sys.modules:
        import datasets

        if datasets.is_progress_bar_enabled():
            datasets.disable_progress_bars()
            restore.append(datasets.enable_progress_bars)
    try:
        yield
    finally:
        for undo in restore:
            undo()


@contextlib.contextmanager
def _native_stderr_parked() -> Iterator[None]:
    try:
        fd_is_stderr = sys.stderr is not None and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # pytest/CliRunner capture: not fd-backed
        fd_is_stderr = False
    with tempfile.TemporaryFile() as parked:
        if sys.stderr is not None:
            sys.stderr.flush()
        saved_fd = os.dup(2)
        saved_stream = sys.stderr
        os.dup2(parked.fileno(), 2)
        if fd_is_stderr:  # Python's own stderr keeps reaching the terminal
            sys.stderr = os.fdopen(os.dup(saved_fd), "w", buffering=1, encoding=saved_stream.encoding,
                                   errors="backslashreplace")
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            if fd_is_stderr:
                sys.stderr.flush()
                sys.stderr.close()
                sys.stderr = saved_stream
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            if failed:
                parked.seek(0)
                text = parked.read().decode("utf-8", errors="replace")
                if text.strip() and sys.stderr is not None:
                    sys.stderr.write(text)
                    sys.stderr.flush()
