"""The user-facing error type.

A :class:`LmforgeError` is a user mistake (bad path, missing column, bad config key, ...):
the CLI prints ``error: <message>`` and ``hint: <hint>`` on one line each and exits with
code 2, with no traceback unless ``--debug`` is given. Anything else is a bug in lmforge
and keeps its traceback.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class LmforgeError(Exception):
    """A problem the user can fix. ``message`` says what and where, ``hint`` what to do."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # one line, as the CLI shows it
        return self.message if not self.hint else f"{self.message} ({self.hint})"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C / SIGTERM after saving a checkpoint (CLI exit code 130)."""

    exit_code = 130

    def __init__(self, message: str, hint: str | None = None, checkpoint=None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.checkpoint = checkpoint
