"""Preference data (chosen / rejected pairs) for DPO and its cousins, each pair turned into one shape:
the prompt as a message list, and the chosen and rejected continuations as message lists.

Shapes, detected from the columns:
    prompt, chosen, rejected     prompt as text or messages; chosen / rejected as text (the assistant's
                                 reply) or messages (the continuation after the prompt)
    chosen, rejected             two whole conversations (message lists) that share a prefix: the prompt
                                 is the shared prefix, the replies are what follows (the common Hub shape)

A list is never turned into text, and text is never parsed as a conversation except a csv cell that
holds a JSON list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from ..errors import LmforgeError
from . import sources
from .chat import messages_of
from .pipeline import DataKind

PAIR_HINT = ("preference data has prompt / chosen / rejected columns (text, or role/content message lists), or "
             "chosen / rejected columns holding whole conversations that share their first turns")


@dataclass
class Pair:
    prompt: list[dict]
    chosen: list[dict]
    rejected: list[dict]
    margin: Optional[float] = None  # a `margin` column: how much better chosen is (reward models' Bradley-Terry margin)


def read_pairs(source: str, cfg, split: str = "train") -> list[Pair]:
    """The preference pairs of a data source (file, built-in dataset or Hub id), validated row by row."""
    df = sources.read_table(source, cfg.data.format, split)
    df.columns = [str(c) for c in df.columns]
    lower = {c.lower(): c for c in df.columns}
    if not {"chosen", "rejected"} <= set(lower):
        raise LmforgeError(f"{source}: no preference columns found (columns: {', '.join(df.columns)})", PAIR_HINT)
    has_prompt = "prompt" in lower
    out = []
    for i, row in enumerate(df.to_dict("records")):
        row = {k.lower(): v for k, v in row.items()}
        where = f"{source} row {i + 1}"
        pair = _pair(row, where) if has_prompt else _pair_from_conversations(row, where)
        if "margin" in row:
            pair.margin = _margin(row["margin"], where)
        out.append(pair)
    if not out:
        raise LmforgeError(f"{source} has no preference pairs", "add data")
    return out


def _margin(value, where: str) -> float:
    import math
    try:
        m = float(value)
    except (TypeError, ValueError):
        raise LmforgeError(f"{where}: column 'margin' must be a number, got {value!r}",
                           "a margin says how much better the chosen reply is (0 = just better)") from None
    if not math.isfinite(m):
        raise LmforgeError(f"{where}: column 'margin' is {m}", "give a finite margin")
    return m


def _messages(value, where: str, column: str) -> list[dict]:
    return messages_of(value, where, column, PAIR_HINT)


def _is_list(value) -> bool:
    if isinstance(value, str):
        return value.strip().startswith("[{")
    return isinstance(value, list) or hasattr(value, "tolist")


def _side(value, where: str, column: str) -> list[dict]:
    """A reply: text (one assistant message) or a message list."""
    if _is_list(value):
        msgs = _messages(value, where, column)
    elif isinstance(value, str):
        msgs = [{"role": "assistant", "content": value}]
    else:
        raise LmforgeError(f"{where}: column '{column}' must be text or a message list, got "
                           f"{type(value).__name__}", PAIR_HINT)
    if not any(m["role"] == "assistant" for m in msgs):
        raise LmforgeError(f"{where}: '{column}' has no assistant message, so there is nothing to score",
                           PAIR_HINT)
    return msgs


def _pair(row: dict, where: str) -> Pair:
    prompt = row.get("prompt")
    if _is_list(prompt):
        p = _messages(prompt, where, "prompt")
    elif isinstance(prompt, str):
        p = [{"role": "user", "content": prompt}]
    else:
        raise LmforgeError(f"{where}: column 'prompt' must be text or a message list, got {type(prompt).__name__}",
                           PAIR_HINT)
    system = row.get("system")
    if isinstance(system, str) and system.strip() and not any(m["role"] == "system" for m in p):
        p.insert(0, {"role": "system", "content": system})
    chosen, rejected = _side(row.get("chosen"), where, "chosen"), _side(row.get("rejected"), where, "rejected")
    # a chosen / rejected conversation that repeats the prompt: keep what follows it
    n = len(p)
    if chosen[:n] == p and rejected[:n] == p and len(chosen) > n and len(rejected) > n:
        chosen, rejected = chosen[n:], rejected[n:]
    return Pair(p, chosen, rejected)


HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant): ")


def hh_messages(text: str) -> Optional[list[dict]]:
    """A conversation written as text in the Anthropic HH style ("\n\nHuman: ... \n\nAssistant: ..."), as
    messages; None when the text is not in that style."""
    parts = HH_TURN.split(text)
    if len(parts) < 5 or parts[0].strip():
        return None
    return [{"role": "user" if who == "Human" else "assistant", "content": body.strip()}
            for who, body in zip(parts[1::2], parts[2::2])]


def _conversation(value, where: str, column: str) -> list[dict]:
    if _is_list(value):
        return _messages(value, where, column)
    msgs = hh_messages(value) if isinstance(value, str) else None
    if msgs is None:
        raise LmforgeError(f"{where}: without a prompt column, '{column}' must be a whole conversation (a message "
                           "list, or text in the \\n\\nHuman: ... \\n\\nAssistant: ... style)", PAIR_HINT)
    return msgs


def _pair_from_conversations(row: dict, where: str) -> Pair:
    chosen = _conversation(row.get("chosen"), where, "chosen")
    rejected = _conversation(row.get("rejected"), where, "rejected")
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    # the replies start at the last assistant turn of the shared part's end (the prompt ends with a user turn)
    while n > 0 and chosen[n]["role"] != "assistant":
        n -= 1
    if n == 0 or chosen[n]["role"] != "assistant" or rejected[n]["role"] != "assistant":
        raise LmforgeError(f"{where}: chosen and rejected do not share a prompt that ends before an assistant "
                           "reply", PAIR_HINT)
    return Pair(chosen[:n], chosen[n:], rejected[n:])


KIND = DataKind("preference pairs", "pair", read_pairs)
