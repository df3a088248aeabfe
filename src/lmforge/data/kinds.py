"""Telling the kinds of data apart from a table's columns (for mixes: every source must be one kind).

The kinds, and the columns that say which one a table is (case-insensitive):

    preference pairs       chosen + rejected
    conversations          messages | conversations | instruction + output | prompt + completion
    query/document pairs   anchor + positive | query + positive | query + document | sentence1 + sentence2 + score
    prompts                prompt (and no completion / chosen): prompts with reference answers for online RL
    labelled texts         a label column (label, class, category, ...) beside a text
    documents              text alone (and every .txt file or folder)
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import LmforgeError
from . import builtin, sources

PREFERENCE, CONVERSATIONS, RETRIEVAL, PROMPTS, LABELLED, DOCUMENTS = (
    "preference pairs", "conversations", "query/document pairs", "prompts", "labelled texts", "documents")

QUERY_DOC_COLUMNS = (("anchor", "positive"), ("query", "positive"), ("query", "document"), ("query", "passage"),
                     ("sentence1", "sentence2", "score"), ("question", "answer", "score"))


def kind_of_columns(columns) -> str:
    cols = {str(c).lower() for c in columns}
    if {"chosen", "rejected"} <= cols:
        return PREFERENCE
    if cols & {"messages", "conversations"} or {"instruction", "output"} <= cols or {"prompt", "completion"} <= cols:
        return CONVERSATIONS
    if any(set(group) <= cols for group in QUERY_DOC_COLUMNS):
        return RETRIEVAL
    if "prompt" in cols:
        return PROMPTS
    if cols & set(sources.LABEL_NAMES):
        return LABELLED
    return DOCUMENTS


def kind_of_source(source: str, cfg, split: str = "train") -> Optional[str]:
    """The kind of a data source by its columns; text files and folders are documents; None if unreadable."""
    path = Path(source).expanduser()
    if not builtin.is_builtin(source) and path.exists():
        if path.is_dir():
            return DOCUMENTS
        try:
            if sources.detect_format(path, cfg.data.format) == "txt":
                return DOCUMENTS
        except LmforgeError:
            return None
    try:
        df = sources.read_table(source, cfg.data.format, split)
    except LmforgeError:
        return None
    return kind_of_columns(df.columns)
