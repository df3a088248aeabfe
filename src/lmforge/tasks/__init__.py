"""Task registry: each task module has ``setup(cfg, log) -> Prepared``."""

from __future__ import annotations

import importlib

TASKS = {
    "classification": "lmforge.tasks.classification",
    "causal-lm": "lmforge.tasks.causal_lm",
    "masked-lm": "lmforge.tasks.masked_lm",
}


def get_task(name: str):
    if name not in TASKS:
        from ..errors import LmforgeError, did_you_mean
        raise LmforgeError(f"unknown task '{name}'.{did_you_mean(name, TASKS)}", f"tasks: {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name])
