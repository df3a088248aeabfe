"""Conversation data for chat / instruction fine-tuning: the common shapes, detected from the columns,
each turned into the same list of {"role", "content"} messages.

    messages            OpenAI: [{"role": "system"|"user"|"assistant", "content": ...}, ...]
    sharegpt            ShareGPT: conversations: [{"from": "human"|"gpt"|"system", "value": ...}, ...]
    alpaca              instruction, optional input, output
    prompt-completion   prompt, completion

`data.chat_format` overrides the detection. A list or dict is never turned into text: a text column
that holds one is an error that names these formats.
"""

from __future__ import annotations

import json
from typing import Optional

import pandas as pd

from ..errors import LmforgeError
from . import sources
from .pipeline import DataKind

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
                  "bing": "assistant", "chatgpt": "assistant", "bard": "assistant"}
FORMAT_HINT = ("conversation data comes as messages (role/content lists), ShareGPT conversations (from/value), "
               "Alpaca (instruction, input, output) or prompt/completion columns; set data.chat_format to say which")


def detect_format(df: pd.DataFrame, source: str, wanted: Optional[str] = None) -> str:
    """The chat format of a table: data.chat_format, else from its column names."""
    cols = {str(c).lower() for c in df.columns}
    if wanted:
        needed = {"messages": {"messages"}, "sharegpt": {"conversations"}, "alpaca": {"instruction", "output"},
                  "prompt-completion": {"prompt", "completion"}}[wanted]
        if not needed <= cols:
            raise LmforgeError(f"{source}: data.chat_format {wanted} needs the column(s) {', '.join(sorted(needed))}",
                               f"available columns: {', '.join(map(str, df.columns))}")
        return wanted
    if "messages" in cols:
        return "messages"
    if "conversations" in cols:
        return "sharegpt"
    if {"instruction", "output"} <= cols:
        return "alpaca"
    if {"prompt", "completion"} <= cols:
        return "prompt-completion"
    raise LmforgeError(f"{source}: no conversation columns found (columns: {', '.join(map(str, df.columns))})",
                       FORMAT_HINT)


def read_conversations(source: str, cfg, split: str = "train") -> list[list[dict]]:
    """The conversations of a data source (file, built-in dataset or Hub id), validated row by row."""
    df = sources.read_table(source, cfg.data.format, split)
    df.columns = [str(c) for c in df.columns]
    lower = {c.lower(): c for c in df.columns}
    fmt = detect_format(df, source, cfg.data.chat_format)
    convert = {"messages": _from_messages, "sharegpt": _from_sharegpt, "alpaca": _from_alpaca,
               "prompt-completion": _from_prompt_completion}[fmt]
    system = lower.get("system")
    out = []
    for i, row in enumerate(df.to_dict("records")):
        where = f"{source} row {i + 1}"
        row = {k.lower(): v for k, v in row.items()}
        messages = convert(row, where)
        if system and isinstance(row.get("system"), str) and row["system"].strip() and \
                not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": row["system"]})
        out.append(messages)
    if not out:
        raise LmforgeError(f"{source} has no conversations", "add data")
    return out


def _as_list(value, where: str, column: str) -> list:
    if isinstance(value, str) and value.strip().startswith("["):  # csv: the list written as JSON
        try:
            value = json.loads(value)
        except ValueError:
            raise LmforgeError(f"{where}: column '{column}' is not a valid JSON list", FORMAT_HINT) from None
    if hasattr(value, "tolist"):  # parquet gives numpy arrays
        value = value.tolist()
    if not isinstance(value, list) or not value:
        raise LmforgeError(f"{where}: column '{column}' must be a non-empty list of turns, got "
                           f"{type(value).__name__}", FORMAT_HINT)
    return value


def _text(value, where: str, what: str) -> str:
    if not isinstance(value, str):
        raise LmforgeError(f"{where}: {what} must be text, got {type(value).__name__}", FORMAT_HINT)
    return value


def messages_of(value, where: str, column: str = "messages", hint: str = FORMAT_HINT) -> list[dict]:
    """A validated list of {role, content} messages from a cell (a list, a numpy array, or JSON text)."""
    out = []
    name = "message" if column == "messages" else f"{column} message"
    for j, turn in enumerate(_as_list(value, where, column)):
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise LmforgeError(f"{where}: {name} {j + 1} is not a {{role, content}} object", hint)
        role = str(turn["role"]).lower()
        if role not in ROLES:
            raise LmforgeError(f"{where}: {name} {j + 1} has role '{turn['role']}'", f"roles are {', '.join(ROLES)}")
        if not isinstance(turn["content"], str):
            raise LmforgeError(f"{where}: {name} {j + 1}'s content must be text, got "
                               f"{type(turn['content']).__name__}", hint)
        out.append({"role": role, "content": turn["content"]})
    return out


def _from_messages(row: dict, where: str) -> list[dict]:
    return messages_of(row.get("messages"), where)


def _from_sharegpt(row: dict, where: str) -> list[dict]:
    out = []
    for j, turn in enumerate(_as_list(row.get("conversations"), where, "conversations")):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise LmforgeError(f"{where}: turn {j + 1} is not a {{from, value}} object", FORMAT_HINT)
        role = SHAREGPT_ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise LmforgeError(f"{where}: turn {j + 1} is from '{turn['from']}'",
                               f"ShareGPT speakers are {', '.join(SHAREGPT_ROLES)}")
        out.append({"role": role, "content": _text(turn["value"], where, f"turn {j + 1}'s value")})
    return out


def _from_alpaca(row: dict, where: str) -> list[dict]:
    instruction = _text(row.get("instruction"), where, "instruction")
    extra = row.get("input")
    if isinstance(extra, str) and extra.strip():
        instruction = f"{instruction}\n\n{extra}"
    return [{"role": "user", "content": instruction},
            {"role": "assistant", "content": _text(row.get("output"), where, "output")}]


def _from_prompt_completion(row: dict, where: str) -> list[dict]:
    return [{"role": "user", "content": _text(row.get("prompt"), where, "prompt")},
            {"role": "assistant", "content": _text(row.get("completion"), where, "completion")}]


def reject_structured_text(values, source: str, column: str) -> None:
    """A text column must hold text: a list or dict (a conversation) is an error naming the chat formats."""
    for i, value in enumerate(values):
        if isinstance(value, (list, dict)) or hasattr(value, "tolist") and not isinstance(value, str):
            raise LmforgeError(f"{source} row {i + 1}: column '{column}' holds a {type(value).__name__}, not text",
                               "for conversations use task: sft (" + FORMAT_HINT + ")")


KIND = DataKind("conversations", "conversation", read_conversations)
