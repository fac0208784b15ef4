"""The one error type users see: a message, a hint, and an exit code."""

from __future__ import annotations

#: Exit codes used by the CLI.
EXIT_FAILED = 1  # a run that failed (missing tool, server down, disk full...)
EXIT_BAD_INPUT = 2  # the user's input is wrong (bad flag, bad data line, unknown base...)
EXIT_INTERRUPTED = 130  # Ctrl-C


class FtpackError(Exception):
    """A failure the user can act on; the CLI prints it without a traceback.

    ``code`` is the process exit status: 2 for bad input, 1 for a failed run.
    """

    def __init__(self, message: str, hint: str | None = None, *, code: int = EXIT_FAILED):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


def bad_input(message: str, hint: str | None = None) -> FtpackError:
    """An FtpackError for a mistake in the user's input (exit code 2)."""
    return FtpackError(message, hint, code=EXIT_BAD_INPUT)
