"""Labelled texts and text pairs (classification, and later rerankers): read, validate every row.

Columns are detected from common names (text / sentence / review ..., label / class / category ...),
or named with data.text_column / text_pair_column / label_column. Labels are strings, or integers
when every label is one; an empty text or a missing label is an error naming its row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import LmforgeError
from . import sources
from .chat import reject_structured_text
from .pipeline import DataKind


def read_labelled(source: str, cfg, split: str, need_label: bool = True) -> pd.DataFrame:
    """Read a table and pick (text, pair, label) columns, validating every row."""
    df = sources.read_table(source, cfg.data.format, split)
    d = cfg.data
    text_col, pair_col = sources.pick_text_columns(df, d.text_column, d.text_pair_column, source)
    label_col = sources.pick_column(df, d.label_column, sources.LABEL_NAMES, "label", source,
                                    "data.label_column", required=need_label)
    if len(df) == 0:
        raise LmforgeError(f"{source} has no rows", "give a non-empty dataset")
    for col in [c for c in (text_col, pair_col) if c]:
        reject_structured_text(df[col].tolist(), source, col)
        bad = df[col].isna() | df[col].astype(str).str.strip().eq("")
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0]) + 1
            raise LmforgeError(f"{source} row {row}: empty or missing text in column '{col}' "
                               f"({int(bad.sum())} such rows)", "remove or fill the empty rows")
    out = pd.DataFrame({"text": df[text_col].astype(str)})
    if pair_col:
        out["text_pair"] = df[pair_col].astype(str)
    if label_col is not None and label_col in df:
        labels = df[label_col]
        bad = labels.isna() | labels.astype(str).str.strip().eq("") | labels.astype(str).str.lower().eq("nan")
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0]) + 1
            raise LmforgeError(f"{source} row {row}: missing or NaN label in column '{label_col}' "
                               f"({int(bad.sum())} such rows)", "fill or drop the rows without a label")
        kinds = {type(v).__name__ for v in labels.tolist()}
        numeric = all(isinstance(v, (int, np.integer)) or (isinstance(v, float) and float(v).is_integer())
                      for v in labels.tolist())
        if len(kinds) > 1 and not numeric:
            raise LmforgeError(f"{source}: column '{label_col}' mixes label types ({', '.join(sorted(kinds))})",
                               "use either all strings or all integers as labels")
        out["label"] = [str(int(v)) if numeric else str(v) for v in labels.tolist()]
        out.attrs["numeric_labels"] = numeric
    return out


KIND = DataKind("labelled texts", "row", read_labelled, labels=lambda df: df["label"])
