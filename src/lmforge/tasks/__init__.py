"""The task registry: one module per task family, each with a `TASK` object (see tasks/base.py).

Adding a task: write tasks/<name>.py with a `Task` subclass and `TASK = ...`, then add one line here
(and its name to config.TaskName; a test keeps the two lists equal). docs/ARCHITECTURE.md has the checklist.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import LmforgeError, did_you_mean
from ..models.lora import model_config_dict
from . import causal_lm, classification, distill, dpo, embedding, grpo, masked_lm, reranker, reward, sft
from .base import EncodedSplit, Task, TaskParts

TASKS: dict[str, Task] = {
    classification.TASK.name: classification.TASK,
    causal_lm.TASK.name: causal_lm.TASK,
    masked_lm.TASK.name: masked_lm.TASK,
    sft.TASK.name: sft.TASK,
    dpo.TASK.name: dpo.TASK,
    grpo.TASK.name: grpo.TASK,
    embedding.TASK.name: embedding.TASK,
    reranker.TASK.name: reranker.TASK,
    reward.TASK.name: reward.TASK,
    distill.TASK.name: distill.TASK,
}

__all__ = ["TASKS", "EncodedSplit", "Task", "TaskParts", "get_task", "task_of"]


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise LmforgeError(f"unknown task '{name}'.{did_you_mean(name, TASKS)}", f"tasks: {', '.join(TASKS)}")
    return TASKS[name]


def task_of(model_dir: Path) -> Task:
    """The task of a saved model: from its run's config.yaml, else from its architecture's name."""
    model_dir = Path(model_dir)
    run_cfg = model_dir.parent / "config.yaml"
    if model_dir.name in ("model", "adapter") and run_cfg.exists():
        name = (yaml.safe_load(run_cfg.read_text()) or {}).get("task")
        if name:
            return get_task(name)
    if (model_dir / "modules.json").exists():  # a sentence-transformers folder
        return embedding.TASK
    config = model_config_dict(model_dir)
    archs = config.get("architectures") or []
    if config.get("num_labels", len(config.get("id2label") or {}) or None) == 1 and \
            any(a.endswith("SequenceClassification") for a in archs):
        return reranker.TASK  # one score per text (pair): a reranker, not a classifier
    for task in TASKS.values():
        if any(a.endswith(task.architectures) for a in archs):
            return task
    raise LmforgeError(f"cannot tell the task of the model in {model_dir} "
                       f"(architectures: {' '.join(archs) or 'none'})")
