"""The light half of the public API: what needs no model, so it answers without importing torch or transformers
(`lmforge models`, `datasets`, `runs`, `init`, `config keys` start in well under two seconds). `lmforge.api`
re-exports all of it.

    from lmforge import catalog
    catalog.models()                     # the built-in model aliases
    print(catalog.starter_config("sft")) # a commented starter config
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from .data.builtin import DATASETS
from .models.zoo import MODELS
from .report.runs import format_duration, list_runs  # noqa: F401 (format_duration: public)
from .tools import starter as _starter


def models() -> list:
    """The built-in model aliases."""
    return list(MODELS.values())


def datasets() -> dict:
    """The built-in datasets: name -> (description, loader)."""
    return dict(DATASETS)


def runs(folder: Union[str, Path] = "runs") -> list[dict]:
    """One row per run folder under `folder`: task, model, data, status, best metric, duration."""
    return list_runs(folder)


def starter_config(task: str, model: Optional[str] = None, data: Optional[str] = None,
                   output_dir: Optional[str] = None, config_path: Optional[str] = None) -> str:
    """A commented starter config (YAML text) for `task` that `train` accepts as written."""
    return _starter.starter_config(task, model, data, output_dir, config_path)


def config_keys(section: Optional[str] = None) -> list[dict]:
    """Every config key (of one section): [{key, type, default, doc}], from the schema."""
    return _starter.config_keys(section)
