"""The command line's one error path for usage mistakes, and the checks of numeric options.

Typer raises its own vendored click exceptions (typer._click); plain click raises click's. Both, and bare
`lmforge`, end in one line naming the problem and `COMMAND --help`, exit 2 (the traceback with --debug).
"""

from __future__ import annotations

import math
import sys
from typing import Optional

import click
import typer
from rich.console import Console

from ..errors import LmforgeError

console = Console(stderr=True)
STATE = {"debug": False}


def _number_check(ok, what: str):
    """An option callback: the value (a float) is finite and `ok`, else a usage error naming the option."""
    def check(ctx, param, value):
        if value is not None and (not math.isfinite(value) or not ok(value)):
            raise typer.BadParameter(f"must be {what}, got {value}")
        return value
    return check


_at_least_0 = _number_check(lambda v: v >= 0, "a finite number >= 0")
_positive = _number_check(lambda v: v > 0, "a finite number > 0")
_probability = _number_check(lambda v: 0 < v <= 1, "in (0, 1]")



# typer raises its own vendored click classes (typer._click), plain click raises click's: catch both.
try:
    from typer._click import exceptions as _tclick
    USAGE_ERRORS: tuple = (click.UsageError, _tclick.UsageError)
    EXITS: tuple = (click.exceptions.Exit, typer.Exit)
    ABORTS: tuple = (click.Abort, typer.Abort)
except ImportError:  # a typer that uses click itself
    USAGE_ERRORS, EXITS, ABORTS = (click.UsageError,), (click.exceptions.Exit,), (click.Abort,)


def _usage_error(e: Exception, argv: Optional[list[str]]) -> int:
    """A command-line mistake: one line naming it and the fix, exit 2 (the traceback only with --debug)."""
    if STATE["debug"]:
        console.print_exception()
    ctx = getattr(e, "ctx", None)
    command = ctx.command_path if ctx is not None else "lmforge"
    message = e.format_message() if hasattr(e, "format_message") else str(e)
    if type(e).__name__ == "NoArgsIsHelpError" or message.startswith("Missing command"):  # bare `lmforge`
        commands = ", ".join(getattr(ctx.command, "commands", {})) if ctx is not None else ""
        message = f"no command given{f' (commands: {commands})' if commands else ''}"
    message = " ".join(message.split())
    console.print(f"error: {message} — see `{command} --help`", markup=False, highlight=False, soft_wrap=True)
    return 2


def _check_argv(argv: Optional[list[str]]) -> None:
    """Bytes that are not UTF-8 on the command line arrive as lone surrogates; no tokenizer can encode them."""
    for i, arg in enumerate(sys.argv[1:] if argv is None else argv):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "replace")[:60]
            raise LmforgeError(f"argument {i + 1} ({shown!r}) is not valid UTF-8 text",
                               "write it in UTF-8 (check the terminal's encoding), or put it in a UTF-8 file")


