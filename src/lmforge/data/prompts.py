"""Prompts with reference answers, for online RL with verifiable rewards (the grpo task builds on it).

One prompt per row:
    prompt        text, or a role/content message list (rendered with the model's chat template later)
    messages      a message list ending in a user (or system) turn, instead of `prompt`
Any other column (answer, solution, tests, ...) is kept as it is and handed to the reward functions
under its own name, the way TRL's GRPOTrainer passes dataset columns.

    rows = read_prompts("math.jsonl", cfg)   # [PromptRow(prompt="2+2?", columns={"answer": "4"}), ...]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Union

from ..errors import LmforgeError
from . import sources
from .chat import messages_of
from .pipeline import DataKind

PROMPT_NAMES = ("prompt", "question", "problem", "query", "instruction")
PROMPT_HINT = ("prompt data has one prompt per row: a 'prompt' column (text or role/content messages) or a "
               "'messages' column; other columns (such as 'answer') go to the reward functions")


@dataclass
class PromptRow:
    prompt: Union[str, list[dict]]
    columns: dict = field(default_factory=dict)  # every other column of the row, by its name


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _prompt(value, where: str, column: str) -> Union[str, list[dict]]:
    if isinstance(value, str) and not value.strip().startswith("[{"):
        if not value.strip():
            raise LmforgeError(f"{where}: empty prompt in column '{column}'", "remove or fill the empty rows")
        return value
    if _missing(value):
        raise LmforgeError(f"{where}: missing prompt in column '{column}'", "remove or fill the empty rows")
    messages = messages_of(value, where, column, PROMPT_HINT)
    if messages[-1]["role"] == "assistant":
        raise LmforgeError(f"{where}: the prompt's last message is the assistant's",
                           "end each prompt with a user turn: the model writes the assistant's reply")
    return messages


def read_prompts(source: str, cfg, split: str = "train") -> list[PromptRow]:
    """The prompts of a data source (file, built-in dataset or Hub id), validated row by row."""
    df = sources.read_table(source, cfg.data.format, split)
    df.columns = [str(c) for c in df.columns]
    wanted = getattr(cfg.data, "prompt_column", None)
    lower = {c.lower(): c for c in df.columns}
    column = "messages" if wanted is None and "messages" in lower and "prompt" not in lower else \
        sources.pick_column(df, wanted, PROMPT_NAMES, "prompt", source, "data.prompt_column")
    column = lower.get(column.lower(), column)
    out = []
    for i, row in enumerate(df.to_dict("records")):
        where = f"{source} row {i + 1}"
        prompt = _prompt(row[column], where, column)
        out.append(PromptRow(prompt, {k: v for k, v in row.items() if k != column}))
    if not out:
        raise LmforgeError(f"{source} has no prompts", "add data")
    return out


KIND = DataKind("prompts", "prompt", read_prompts)
