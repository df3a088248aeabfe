"""The one reader of inference input files (`predict`, `generate`, `fill-mask` --input): a .txt file
is one text per non-empty line; a table (csv / tsv / jsonl / json / parquet) gives the named column,
or the first of the usual names."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from ..data import sources
from ..errors import LmforgeError

PLAIN_TEXT_SUFFIXES = (".txt", ".text", "")


def read_texts(path: str, column: Optional[str] = None, names: Sequence[str] = sources.TEXT_NAMES,
               what: str = "text", option: str = "--text-column", pair_column: Optional[str] = None,
               pair_option: str = "--text-pair-column", detect_pairs: bool = False,
               ) -> tuple[list[str], Optional[list[str]]]:
    """(texts, pairs or None) from an input file; an error names the file and the fix."""
    p = Path(path)
    if not p.exists():
        raise LmforgeError(f"input file not found: {path}", "check the path")
    if p.suffix.lower() in PLAIN_TEXT_SUFFIXES:
        texts = [line for line in sources.read_text_file(p).splitlines() if line.strip()]
        pairs = None
    else:
        df = sources.read_table(str(p))
        if detect_pairs:  # classification input: a known pair of columns is used as text pairs
            col, pair = sources.pick_text_columns(df, column, pair_column, path, option, pair_option, tuple(names))
        else:
            col = sources.pick_column(df, column, names, what, path, option)
            pair = sources.pick_column(df, pair_column, sources.PAIR_NAMES, "text pair", path, pair_option) \
                if pair_column else None
        texts = _as_texts(df[col])
        pairs = _as_texts(df[pair]) if pair else None
    if not texts:
        raise LmforgeError(f"{path} has no {what}s", f"write one {what} per line")
    return texts, pairs


def _as_texts(column) -> list[str]:
    """A column as texts: a missing cell is an empty text (never the string 'nan')."""
    return ["" if v is None or (isinstance(v, float) and v != v) else str(v) for v in column.tolist()]


ID_NAMES = ("id", "idx", "uid", "guid", "example_id", "row_id", "doc_id", "key")


def read_ids(path: str) -> Optional[list]:
    """The id column of an input table (id, idx, uid, guid, example_id, ...), carried into each result; None
    for a .txt file or a table without one."""
    p = Path(path)
    if p.suffix.lower() in PLAIN_TEXT_SUFFIXES:
        return None
    df = sources.read_table(str(p))
    lower = {str(c).lower(): c for c in df.columns}
    col = next((lower[n] for n in ID_NAMES if n in lower), None)
    if col is None:
        return None
    return [v.item() if hasattr(v, "item") else v for v in df[col].tolist()]


def with_ids(rows: list[dict], ids: Optional[list], per: int = 1) -> list[dict]:
    """Each result with its input's id first (`per` results per input, e.g. several samples)."""
    if ids is None:
        return rows
    return [{"id": ids[i // per], **r} for i, r in enumerate(rows)]
