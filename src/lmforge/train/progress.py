"""A rich progress bar: step, loss, lr, real tokens/s, MFU and ETA; a line per evaluation."""

from __future__ import annotations

from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrainProgress:
    def __init__(self, enabled: bool = True, console: Optional[Console] = None):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=self.console, disable=not enabled, transient=False, refresh_per_second=4)
        self.train_id = None
        self.loss = self.lr = self.tok_s = self.mfu = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def _info(self) -> str:
        parts = []
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.lr is not None:
            parts.append(f"lr {self.lr:.2e}")
        if self.tok_s is not None:
            parts.append(f"{self.tok_s:,.0f} tok/s")
        if self.mfu is not None:
            parts.append(f"MFU {100 * self.mfu:.1f}%")
        return " | ".join(parts)

    def start_train(self, total: int, completed: int = 0):
        self.train_id = self.progress.add_task("train", total=total, completed=completed, info="")

    def update_train(self, step: int, loss: float, lr: float):
        self.loss, self.lr = loss, lr
        self.progress.update(self.train_id, completed=step, info=self._info())

    def set_rate(self, tok_s: float, mfu: Optional[float]):
        self.tok_s, self.mfu = tok_s, mfu
        if self.train_id is not None:
            self.progress.update(self.train_id, info=self._info())

    def add_eval(self, desc: str, total: int):
        return self.progress.add_task(desc, total=total, info="")

    def advance_eval(self, task_id):
        self.progress.advance(task_id)

    def done_eval(self, task_id):
        self.progress.remove_task(task_id)

    def note_eval(self, metrics: dict, key: str):
        shown = {k: v for k, v in metrics.items() if k in ("loss", key, "perplexity", "accuracy", "mcc")}
        text = ", ".join(f"{k} {v:.4f}" for k, v in shown.items() if isinstance(v, (int, float)))
        self.progress.console.print(f"[cyan]eval[/cyan] step {self.progress.tasks[0].completed:.0f}: {text}")
