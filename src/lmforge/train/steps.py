"""The step arithmetic, one implementation for the loop and the doctor: batches, steps and the effective batch.

    plan = plan_steps(cfg.train, batches_per_epoch=113, processes=1)
    plan.total_steps, plan.steps_per_epoch, plan.effective_batch
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class StepPlan:
    per_device: int  # examples (or blocks) per process per micro-batch
    accumulation: int  # micro-batches per optimizer step
    processes: int
    batches_per_epoch: int  # micro-batches per process per epoch
    max_steps: int  # train.max_steps (-1: by epochs)
    epochs: float
    repeats: int = 1  # optimizer steps on each step's batches (grpo.num_iterations: the same rollouts reused)

    @property
    def global_batch(self) -> int:
        """Examples per micro-step over all processes (the unit the batch order is cut in)."""
        return self.per_device * self.processes

    @property
    def effective_batch(self) -> int:
        """Examples per optimizer step."""
        return self.per_device * self.accumulation * self.processes

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.batches_per_epoch / self.accumulation) * self.repeats

    @property
    def total_steps(self) -> int:
        return self.max_steps if self.max_steps > 0 else max(1, math.ceil(self.epochs * self.steps_per_epoch))


def plan_steps(tc, batches_per_epoch: int, processes: int, repeats: int = 1) -> StepPlan:
    """The plan of a run from its `train:` section and the batches each process gets per epoch (`repeats`:
    optimizer steps taken on each step's batches, the task's `step_repeats`)."""
    return StepPlan(tc.per_device_train_batch_size, tc.gradient_accumulation_steps, processes, batches_per_epoch,
                    tc.max_steps, tc.num_train_epochs, repeats)
