"""Read local files, built-in datasets and Hub datasets into a pandas DataFrame.

Every problem with a file is an :class:`LmforgeError` that names the file and the line:
missing file, unknown format, non-UTF-8 bytes, NUL bytes, ragged CSV rows, a .jsonl that
is not JSON lines, an empty file.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Optional

import pandas as pd

from ..errors import LmforgeError, did_you_mean
from . import builtin

FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".parquet": "parquet", ".pq": "parquet", ".txt": "txt", ".text": "txt"}


def detect_format(path: Path, fmt: Optional[str]) -> str:
    if fmt:
        return fmt
    ext = path.suffix.lower()
    if ext == ".gz" and len(path.suffixes) >= 2:  # train.csv.gz: the format of the compressed file
        ext = path.suffixes[-2].lower()
    if ext in FORMATS:
        return FORMATS[ext]
    raise LmforgeError(
        f"cannot tell the format of {path} from its extension '{ext or '(none)'}'",
        f"rename it to one of {', '.join(sorted(set(FORMATS)))} or set data.format",
    )


# The longest single field or JSON line read from a table: a longer one is almost always a file without
# line breaks or an unclosed quote (a 10 MB review is not a review).
MAX_FIELD_CHARS = 10_000_000


def read_text_file(path: Path) -> str:
    """Whole file as text: UTF-8 (a BOM is dropped; gzip-compressed files are read through), with errors that
    give the line. Only regular files: a FIFO or a device would block or never end."""
    if not path.is_file():
        raise LmforgeError(f"{path} is not a regular file (a pipe, a socket or a device?)",
                           "save the data to a file first")
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":  # gzip, whatever the file is called
        import gzip
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise LmforgeError(f"{path} is a damaged gzip file ({e})", "check the download or re-compress it") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    head = data[:400]
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or (len(head) >= 4 and (head[1::2].count(0) > len(head) // 3
                                                                         or head[0::2].count(0) > len(head) // 3)):
        raise LmforgeError(f"{path} is UTF-16 text, not UTF-8",
                           "re-save it as UTF-8, e.g. iconv -f utf-16 -t utf-8 in > out")
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise LmforgeError(f"{path} line {line}: NUL byte in the file (binary data?)",
                           "remove the NUL bytes or check that this is the right file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise LmforgeError(
            f"{path} line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x})",
            "re-save the file as UTF-8, e.g. iconv -f latin1 -t utf-8 in > out",
        ) from None


class _checked_rows:
    """A csv reader whose errors (a field over MAX_FIELD_CHARS, a stray NUL) name the file and line."""

    def __init__(self, path: Path, reader):
        self.path, self.reader = path, reader

    @property
    def line_num(self) -> int:
        return self.reader.line_num

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self.reader)
        except csv.Error as e:
            line = self.reader.line_num
            if "field larger" in str(e):
                raise LmforgeError(
                    f"{self.path} line {line}: a field longer than {MAX_FIELD_CHARS // 1_000_000} MB "
                    "(a file without line breaks, or an unclosed quote?)",
                    "split the text into rows, or close the quote") from None
            raise LmforgeError(f"{self.path} line {line}: {e}", "fix the row's quoting") from None


def _read_delimited(path: Path, text: str, sep: str) -> pd.DataFrame:
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise LmforgeError(f"{path} is empty", "give a file with a header row and data rows")
    csv.field_size_limit(MAX_FIELD_CHARS)
    reader = _checked_rows(path, csv.reader(io.StringIO(text), delimiter=sep))
    header = next(reader)
    if len(header) == 1 and sep == "," and ("\t" in header[0] or ";" in header[0]):
        hint = ("the file looks tab-separated: use the .tsv extension or set data.format: tsv"
                if "\t" in header[0] else "the file looks semicolon-separated: convert it to commas or tabs")
        raise LmforgeError(f"{path} line 1: the header is a single column", hint)
    seen = set()
    dups = [h for h in header if h in seen or seen.add(h)]
    if dups:
        raise LmforgeError(f"{path} line 1: the column name {dups[0]!r} appears more than once",
                           "give every column its own name")
    n = len(header)
    rows = []
    for row in reader:
        if not row or (len(row) == 1 and row[0].strip() == ""):
            continue
        if len(row) != n:
            raise LmforgeError(
                f"{path} line {reader.line_num}: expected {n} fields like the header, found {len(row)}",
                "quote fields that contain the delimiter, or fix the row",
            )
        rows.append(row)
    if not rows:
        raise LmforgeError(f"{path} has a header but no data rows", "add data rows")
    df = pd.DataFrame(rows, columns=header)
    # Empty cells are missing values; numeric-looking columns become numbers (integer labels).
    df = df.replace({"": None})
    for col in df.columns:
        conv = pd.to_numeric(df[col], errors="coerce")
        if conv.notna().sum() == df[col].notna().sum() and df[col].notna().any():
            df[col] = conv
    return df


def _read_json(path: Path, text: str, fmt: str) -> pd.DataFrame:
    stripped = text.strip()
    if not stripped:
        raise LmforgeError(f"{path} is empty", "give one JSON object per line")
    if fmt == "json" and stripped.startswith("["):
        try:
            records = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise LmforgeError(f"{path} line {e.lineno}: invalid JSON ({e.msg})",
                               "fix the JSON syntax there (a missing comma or quote?), or write one object per line "
                               "as a .jsonl file") from None
    else:
        records = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            if len(line) > MAX_FIELD_CHARS:
                raise LmforgeError(f"{path} line {i}: a line longer than {MAX_FIELD_CHARS // 1_000_000} MB "
                                   "(not JSON lines?)", "split the data into one JSON object per line")
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                hint = ("this looks like one pretty-printed JSON document, not JSON lines: "
                        "write one object per line, or use a .json extension for a JSON array"
                        if i == 1 and line.strip() in ("{", "[") else "each line must be one JSON object")
                raise LmforgeError(f"{path} line {i}: not a JSON object ({e.msg})", hint) from None
            if not isinstance(obj, dict):
                raise LmforgeError(f"{path} line {i}: expected a JSON object, got {type(obj).__name__}",
                                   "write one {\"text\": ..., \"label\": ...} object per line")
            records.append(obj)
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise LmforgeError(f"{path}: expected a list of JSON objects")
    if not records:
        raise LmforgeError(f"{path} has no records", "add data")
    return pd.DataFrame.from_records(records)


def read_table(source: str, fmt: Optional[str] = None, split: str = "train") -> pd.DataFrame:
    """Read a local file, a built-in dataset or a Hub dataset id into a DataFrame."""
    if builtin.is_builtin(source):
        return builtin.load(source, split)
    path = Path(source).expanduser()
    if not path.exists():
        if builtin.looks_like_hub_id(source):
            return builtin.load_hub(source, split)
        raise LmforgeError(f"data file not found: {source}.{did_you_mean(source, builtin.DATASETS)}",
                           "check the path (relative paths start from the current folder)")
    if path.is_dir():
        raise LmforgeError(f"{path} is a folder; a table (csv/jsonl/...) was expected",
                           "point at a file, or use a txt folder with a language-model task")
    if not path.is_file():
        raise LmforgeError(f"{path} is not a regular file (a pipe, a socket or a device?)",
                           "save the data to a file first")
    fmt = detect_format(path, fmt)
    if fmt == "parquet":
        try:
            return pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several types for a bad file
            raise LmforgeError(f"{path} is not a readable parquet file: {str(e).splitlines()[0][:200]}",
                               "check that this is the right file, or set data.format to its real format") from None
    text = read_text_file(path)
    if fmt in ("csv", "tsv"):
        return _read_delimited(path, text, "," if fmt == "csv" else "\t")
    if fmt in ("json", "jsonl"):
        return _read_json(path, text, fmt)
    if fmt == "txt":
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            raise LmforgeError(f"{path} is empty", "give one example per line")
        return pd.DataFrame({"text": lines})
    raise LmforgeError(f"unsupported format '{fmt}'")


TEXT_NAMES = ("text", "sentence", "review", "content", "document", "body", "comment", "sentence1",
              "question", "premise", "article")
PAIR_NAMES = ("text_pair", "sentence2", "text2", "hypothesis", "context")
LABEL_NAMES = ("label", "labels", "class", "category", "target", "sentiment", "score", "y", "topic")


# Text-pair columns known from common datasets (NLI, paraphrase, QA ranking): both present = a pair task.
KNOWN_PAIRS = (("premise", "hypothesis"), ("sentence1", "sentence2"), ("question1", "question2"),
               ("text_a", "text_b"), ("text1", "text2"), ("text", "text_pair"), ("sentence_a", "sentence_b"),
               ("sentence", "sentence2"), ("query", "passage"), ("query", "document"))


def pick_text_columns(df: pd.DataFrame, text_column: Optional[str], pair_column: Optional[str], source: str,
                      text_option: str = "data.text_column", pair_option: str = "data.text_pair_column",
                      text_names: tuple[str, ...] = TEXT_NAMES) -> tuple[str, Optional[str]]:
    """(text column, pair column or None): the named ones, else a known pair of columns (premise / hypothesis,
    sentence1 / sentence2, ...) when both are present, else the first usual text column alone."""
    if text_column is None and pair_column is None:
        lower = {str(c).lower(): str(c) for c in df.columns}
        for first, second in KNOWN_PAIRS:
            if first in lower and second in lower:
                return lower[first], lower[second]
    text = pick_column(df, text_column, text_names, "text", source, text_option)
    pair = pick_column(df, pair_column, PAIR_NAMES, "text pair", source, pair_option) if pair_column else None
    return text, pair


def pick_column(df: pd.DataFrame, wanted: Optional[str], candidates: tuple[str, ...], role: str,
                source: str, config_key: str, required: bool = True) -> Optional[str]:
    cols = [str(c) for c in df.columns]
    if wanted is not None:
        if wanted not in cols:
            raise LmforgeError(
                f"column '{wanted}' ({role}) not found in {source}.{did_you_mean(wanted, cols)}",
                f"available columns: {', '.join(cols)}; set {config_key}",
            )
        return wanted
    lower = {c.lower(): c for c in cols}
    for name in candidates:
        if name in lower:
            return lower[name]
    if required:
        raise LmforgeError(f"no {role} column found in {source}",
                           f"available columns: {', '.join(cols)}; set {config_key}")
    return None
