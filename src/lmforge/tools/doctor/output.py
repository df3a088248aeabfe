"""How the doctor reports: sections, ok / info / warning / problem lines, and the report it returns."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from rich.console import Console
from rich.markup import escape

from ...errors import LmforgeError


@dataclass
class DoctorReport:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    facts: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


class Out:
    def __init__(self, console: Console, report: DoctorReport):
        self.c, self.r = console, report

    def section(self, title: str) -> None:
        self.c.print(f"\n[bold]{title}[/bold]")

    def ok(self, text: str) -> None:
        self.c.print(f"  [green]ok[/green]      {text}", markup=True, highlight=False)

    def info(self, text: str) -> None:
        self.c.print(f"          {text}", markup=False, highlight=False)

    def warn(self, text: str) -> None:
        self.r.warnings.append(text)
        self.c.print(f"  [yellow]warning[/yellow] {_esc(text)}", highlight=False)

    def problem(self, text: str) -> None:
        self.r.problems.append(text)
        self.c.print(f"  [red]problem[/red] {_esc(text)}", highlight=False)

    def finding(self, level: str, text: str) -> None:
        """A task's finding: level 'problem', 'warning' or 'info'."""
        {"problem": self.problem, "warning": self.warn}.get(level, self.info)(text)

    def finish(self) -> DoctorReport:
        self.c.print()
        if self.r.problems:
            self.c.print(f"[red bold]{len(self.r.problems)} problem(s)[/red bold] — training would not start or "
                         "would fail:")
            for p in self.r.problems:
                self.c.print(f"  - {_esc(p)}", highlight=False)
        else:
            self.c.print("[green bold]ready to train[/green bold]"
                         + (f" ({len(self.r.warnings)} warning(s) above)" if self.r.warnings else ""))
        return self.r


def _esc(text: str) -> str:
    return escape(text)


def err(e: LmforgeError) -> str:
    return e.message + (f" — {e.hint}" if e.hint else "")


class Collect(logging.Handler):
    """Collects what the task's setup logs, to show it in the report."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)
