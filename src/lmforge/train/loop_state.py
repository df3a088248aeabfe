"""The training loop's resumable state, listed once: a checkpoint saves it (`Trainer.state`), a resume restores it
(`Trainer.resume`), and the Trainer reads and writes each field as an attribute of its own (`trainer.step`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class LoopState:
    """The loop's resumable state, listed once: a checkpoint saves it, a resume restores it, and the Trainer
    reads and writes each field as an attribute of its own (`trainer.step`)."""
    step: int = 0
    epoch: int = 0
    batch_pos: int = 0  # next batch index within the epoch
    repeat: int = 0  # next optimizer step on the batches at batch_pos (tasks with step_repeats > 1)
    best: Optional[float] = None
    best_step: Optional[int] = None
    bad_evals: int = 0
    eval_history: list = field(default_factory=list)
    last_loss: Optional[float] = None
    # The logging window: each log.jsonl line averages the loss over the steps since the last line;
    # saved in checkpoints so a resumed run writes the same lines.
    win_loss: float = 0.0
    win_items: int = 0
    nan_streak: int = 0  # consecutive skipped non-finite steps (nan_policy: skip)
    nan_skipped: int = 0  # all skipped batches


def state_property(name: str) -> property:
    return property(lambda self: getattr(self.loop_state, name),
                    lambda self, value: setattr(self.loop_state, name, value))
