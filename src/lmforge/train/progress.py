"""Training progress: a rich progress bar on a terminal (step, loss, lr, real tokens/s, MFU, ETA; fits 80
columns), and a plain line per logging step when stdout/stderr is not a terminal (nohup, CI, notebooks,
pipes); a line per evaluation in both."""

from __future__ import annotations

import sys
import time
from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class TrainProgress:
    def __init__(self, enabled: bool = True, console: Optional[Console] = None, plain: Optional[bool] = None):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        # not a terminal: no bar (it would print nothing until the end), a plain line per logging step
        self.plain = enabled and (not self.console.is_terminal if plain is None else plain)
        narrow = self.console.width < 100
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=10 if narrow else 24), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=self.console, disable=not enabled or self.plain, transient=False, refresh_per_second=4)
        self.narrow = narrow
        self.train_id = None
        self.loss = self.lr = self.tok_s = self.mfu = None
        self.step = self.total = self.first = 0
        self.t0 = time.perf_counter()

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
            parts.append(f"lr {self.lr:.1e}")
        if self.tok_s is not None:
            parts.append(f"{self.tok_s:,.0f} tok/s")
        if self.mfu is not None and not self.narrow:
            parts.append(f"MFU {100 * self.mfu:.1f}%")
        return " | ".join(parts)

    def start_train(self, total: int, completed: int = 0):
        self.total, self.first, self.step, self.t0 = total, completed, completed, time.perf_counter()
        self.train_id = self.progress.add_task("train", total=total, completed=completed, info="")

    def update_train(self, step: int, loss: float, lr: float):
        self.loss, self.lr, self.step = loss, lr, step
        self.progress.update(self.train_id, completed=step, info=self._info())

    def set_rate(self, tok_s: float, mfu: Optional[float], window_loss: Optional[float] = None):
        """Called once per logging step (after the step's update_train), with the logging window's mean loss
        (the number log.jsonl gets)."""
        self.tok_s, self.mfu = tok_s, mfu
        if window_loss is not None:
            self.loss = window_loss
        if self.train_id is not None:
            self.progress.update(self.train_id, info=self._info())
        if self.plain:
            done = self.step - self.first
            elapsed = time.perf_counter() - self.t0
            eta = elapsed / done * (self.total - self.step) if done > 0 else 0.0
            self.console.print(f"step {self.step}/{self.total} | {self._info()} | elapsed {fmt_seconds(elapsed)} "
                               f"| eta {fmt_seconds(eta)}", markup=False, highlight=False, soft_wrap=True)
            if hasattr(sys.stderr, "flush"):
                sys.stderr.flush()

    PLAIN_EVERY_S = 10.0  # without a terminal, an evaluation says how far it is at most this often

    def add_eval(self, desc: str, total: int):
        task_id = self.progress.add_task(desc, total=total, info="")
        if self.plain:
            self._evals = getattr(self, "_evals", {})
            now = time.perf_counter()
            self._evals[task_id] = {"desc": desc, "total": total, "done": 0, "t0": now, "said": now}
        return task_id

    def advance_eval(self, task_id):
        self.progress.advance(task_id)
        ev = getattr(self, "_evals", {}).get(task_id)
        if ev is None:
            return
        ev["done"] += 1
        now = time.perf_counter()
        if now - ev["said"] >= self.PLAIN_EVERY_S and ev["done"] < ev["total"]:
            ev["said"] = now
            elapsed = now - ev["t0"]
            eta = elapsed / ev["done"] * (ev["total"] - ev["done"])
            self.console.print(f"{ev['desc']}: {ev['done']}/{ev['total']} batches | elapsed {fmt_seconds(elapsed)} "
                               f"| eta {fmt_seconds(eta)}", markup=False, highlight=False, soft_wrap=True)

    def done_eval(self, task_id):
        self.progress.remove_task(task_id)
        getattr(self, "_evals", {}).pop(task_id, None)

    def note_eval(self, metrics: dict, key: str):
        shown = {k: v for k, v in metrics.items()
                 if k in ("loss", key, "perplexity", "accuracy", "mcc", "reward_accuracy", "reward_margin")}
        text = ", ".join(f"{k} {v:.4f}" for k, v in shown.items() if isinstance(v, (int, float)))
        self.progress.console.print(f"[cyan]eval[/cyan] step {self.step}: {text}")
