"""Keep library chatter off the user's screen; ``--debug`` lets all of it through.

torch, transformers, TRL, PEFT, datasets, accelerate, bitsandbytes and llama.cpp talk
through four channels: Python warnings (torch's "gemv_4bit has no autograd kernel",
renamed-argument notes), the ``logging`` module (bitsandbytes' "pip install kernels" note,
transformers' advisory warnings), tqdm progress bars, and C code writing to the stderr
file descriptor or ``sys.stderr`` directly (llama.cpp, plain tqdm bars). :func:`quiet_libraries`
closes the first three for one block, the fourth too when asked, and restores every
setting afterwards. ftpack's own output goes through the Reporter; what a user needs to
know (an error, a real problem) ftpack says itself.

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

#: The most severe library log level that stays hidden: what a library logs at WARNING or
#: below is for its developers; ERROR and CRITICAL still show.
HIDDEN_LOG_LEVEL = logging.WARNING

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
def quiet_libraries(*, stderr: bool = False, errors: bool = False) -> Iterator[None]:
    """Silence library warnings, logs at WARNING and below, and progress bars inside the block.

    ``errors=True`` drops library ERROR records too: for calls whose failure ftpack reports
    itself, with the library's message in it (a library that logs the error it then raises
    would show it twice).

    ``stderr=True`` also parks everything written to stderr inside the block — plain tqdm
    bars, C code writing to file descriptor 2 (llama.cpp, ggml) — in a temporary file,
    replayed only when the block raises so that an error keeps its context. Use it only
    around calls that report nothing through ftpack's Reporter (its warnings go to stderr).
    """
    if debug_enabled():
        yield
        return
    import warnings

    with contextlib.ExitStack() as stack:
        stack.enter_context(_logs_up_to(logging.ERROR if errors else HIDDEN_LOG_LEVEL))
        stack.enter_context(_progress_bars_off())
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")  # ftpack itself never warns through `warnings`
        if stderr:
            stack.enter_context(_stderr_parked())
        yield


@contextlib.contextmanager
def _logs_up_to(level: int) -> Iterator[None]:
    """Drop every log record at ``level`` or below, from any logger: by level, not by a list
    of library names or messages, so a library (or a new release's message) that ftpack
    has never seen stays hidden too. ftpack itself does not log; its output is the Reporter's.
    ``logging.disable`` is checked before a logger's own level and handlers, so a library
    that sets its logger to DEBUG or attaches its own handler is covered as well."""
    saved = logging.root.manager.disable
    logging.disable(max(level, saved))
    try:
        yield
    finally:
        logging.disable(saved)


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
def _stderr_parked() -> Iterator[None]:
    """Point file descriptor 2 and ``sys.stderr`` at a temporary file for the block."""
    saved_stream = sys.stderr
    if saved_stream is not None:
        saved_stream.flush()
    with tempfile.TemporaryFile() as parked:
        saved_fd = os.dup(2)
        os.dup2(parked.fileno(), 2)
        sys.stderr = os.fdopen(os.dup(parked.fileno()), "w", buffering=1, encoding="utf-8", errors="replace")
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.close()
            sys.stderr = saved_stream
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            if failed and saved_stream is not None:
                parked.seek(0)
                saved_stream.write(parked.read().decode("utf-8", errors="replace"))
                saved_stream.flush()
