"""Text corpora for the language-model tasks: read documents, tokenize them, pack or chunk them.

Shared by `causal-lm` and `masked-lm`. The API (stable):

    docs = read_corpus("data/train.txt", cfg, "train")          # -> list[str], one per document
    ids = tokenize_documents(docs, tokenizer, add_eos=True)     # -> list[list[int]]
    blocks = pack(ids, block_size=256)                           # -> Packed(input_ids, position_ids)

Sources: a .txt file (one document per line, or documents split by ``data.document_separator``),
a folder of .txt files (one document per file), a jsonl/json/csv/tsv/parquet file (the text
column), a built-in corpus (``kjv``), or a Hub dataset id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import LmforgeError
from . import builtin, sources
from .chat import reject_structured_text
from .pipeline import DataKind

# `data.document_separator` may name a blank line instead of spelling it as an escape.
BLANK_LINE_NAMES = ("blank-line", "blank_line", "blankline", "paragraph")


def separator_pattern(sep: Optional[str]) -> Optional[re.Pattern]:
    """The regex that splits a text file into documents (None: one document per line)."""
    if sep is None:
        return None
    # "\n\n" typed on a command line arrives as backslash-n: decode the usual escapes.
    decoded = sep.encode("utf-8").decode("unicode_escape") if "\\" in sep else sep
    if sep.lower() in BLANK_LINE_NAMES or (decoded.strip("\r\n") == "" and decoded.count("\n") >= 2):
        return re.compile(r"\n[ \t\r]*\n")  # one or more blank lines (spaces on them allowed)
    if decoded == "":
        raise LmforgeError("data.document_separator is empty", "use e.g. 'blank-line', '\\n\\n' or '<|endoftext|>'")
    return re.compile(re.escape(decoded))


def split_documents(text: str, sep: Optional[str]) -> list[str]:
    """Documents of a text: one per non-empty line, or the pieces between separators (stripped)."""
    pattern = separator_pattern(sep)
    text = text.replace("\r\n", "\n")
    pieces = text.split("\n") if pattern is None else pattern.split(text)
    return [p.strip() for p in pieces if p.strip()]


def _read_txt_folder(path: Path, sep: Optional[str]) -> list[str]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (".txt", ".text", ".md"))
    if not files:
        raise LmforgeError(f"the folder {path} has no .txt files", "put one document per .txt file in it")
    docs: list[str] = []
    for f in files:
        text = sources.read_text_file(f)
        if sep is None:
            if text.strip():
                docs.append(text.strip())  # a file is one document
        else:
            docs.extend(split_documents(text, sep))
    return docs


def read_corpus(source: str, cfg, split: str = "train") -> list[str]:
    """The documents of a corpus source, in file order; empty documents are dropped.

    `cfg` is the lmforge Config (uses data.format, data.text_column, data.document_separator).
    """
    d = cfg.data
    sep = getattr(d, "document_separator", None)
    path = Path(source).expanduser()
    if not builtin.is_builtin(source) and path.exists():
        if path.is_dir():
            docs = _read_txt_folder(path, sep)
        else:
            fmt = sources.detect_format(path, d.format)
            if fmt == "txt":
                docs = split_documents(sources.read_text_file(path), sep)
            else:
                docs = _table_docs(sources.read_table(source, fmt, split), d.text_column, source, sep)
    else:
        docs = _table_docs(sources.read_table(source, d.format, split), d.text_column, source, sep)
    if not docs:
        raise LmforgeError(f"the corpus {source} is empty (no non-blank text)", "give a corpus with some text in it")
    return docs


def _table_docs(df, text_column: Optional[str], source: str, sep: Optional[str]) -> list[str]:
    col = sources.pick_column(df, text_column, sources.TEXT_NAMES, "text", source, "data.text_column")
    reject_structured_text(df[col].tolist(), source, col)
    docs: list[str] = []
    for value in df[col].tolist():
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue
        text = str(value)
        if sep is not None:
            docs.extend(split_documents(text, sep))
        elif text.strip():
            docs.append(text.strip())
    return docs


def tokenize_documents(docs: Sequence[str], tokenizer, add_eos: bool = True, batch: int = 1000,
                       with_counts: bool = False):
    """Token ids per document, with the tokenizer's own specials (e.g. BOS) and EOS appended.

    EOS is appended unless the tokenizer already ended the document with it, so a fine-tuned
    model learns where documents stop. With ``with_counts=True`` also returns, per token, the
    whitespace words that start in it and the UTF-8 bytes of text it covers (specials: 0), so any
    slice of tokens knows its share of the original text: ``(ids, words, bytes)``.
    """
    eos = tokenizer.eos_token_id
    if add_eos and eos is None:
        raise LmforgeError("the tokenizer has no eos token, so documents cannot be ended",
                           "use a tokenizer with an eos token (or set one in its tokenizer_config.json)")
    fast = bool(getattr(tokenizer, "is_fast", False))
    ids_out: list[list[int]] = []
    words_out: list[list[int]] = []
    bytes_out: list[list[int]] = []
    for i in range(0, len(docs), batch):
        part = list(docs[i:i + batch])
        enc = tokenizer(part, add_special_tokens=True, return_attention_mask=False, verbose=False,
                        return_offsets_mapping=with_counts and fast, return_special_tokens_mask=with_counts)
        for j, ids in enumerate(enc["input_ids"]):
            ids = list(ids)
            if with_counts:
                special = enc["special_tokens_mask"][j]
                offsets = enc["offset_mapping"][j] if fast else None
                w, b = _token_counts(part[j], ids, special, offsets, tokenizer)
            if add_eos and (not ids or ids[-1] != eos):
                ids.append(eos)
                if with_counts:
                    w.append(0)
                    b.append(0)
            ids_out.append(ids)
            if with_counts:
                words_out.append(w)
                bytes_out.append(b)
    return (ids_out, words_out, bytes_out) if with_counts else ids_out


_WORD = re.compile(r"\S+")


def _token_counts(text: str, ids: list[int], special, offsets, tokenizer) -> tuple[list[int], list[int]]:
    """Per token: words starting in it and bytes it covers. Totals equal the text's words and bytes."""
    n = len(ids)
    words, nbytes = [0] * n, [0] * n
    real = [k for k in range(n) if not special[k]]
    if not real:
        return words, nbytes
    if offsets is None:  # slow tokenizer: put the document's counts on its first real token
        words[real[0]] = len(text.split())
        nbytes[real[0]] = len(text.encode("utf-8"))
        return words, nbytes
    starts = np.array([offsets[k][0] for k in real])
    starts = np.maximum.accumulate(starts)  # byte-level pieces of one character share a start
    # Each token owns the text from its start to the next token's start (the first one from 0).
    bounds = np.concatenate([[0], starts[1:], [len(text)]])
    for r, k in enumerate(real):
        nbytes[k] = len(text[bounds[r]:bounds[r + 1]].encode("utf-8"))
    for m in _WORD.finditer(text):
        r = max(0, int(np.searchsorted(starts, m.start(), side="right")) - 1)
        words[real[r]] += 1
    return words, nbytes


@dataclass
class Packed:
    """Fixed-size blocks cut from the concatenated documents.

    position_ids restart at 0 where a document starts (and at the start of each block), so an
    attention that honours them never looks across a document boundary.
    """
    input_ids: np.ndarray      # (n_blocks, block_size) int64
    position_ids: np.ndarray   # (n_blocks, block_size) int64
    total_tokens: int          # tokens before cutting
    dropped_tokens: int        # the final remainder shorter than a block (0 when kept)
    tail_ids: Optional[np.ndarray] = None        # the kept remainder (keep_remainder=True), shorter than a block
    tail_positions: Optional[np.ndarray] = None
    extras: Optional[dict] = None  # name -> (n_blocks, block_size) array for each per-token extra
    tail_extras: Optional[dict] = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def pack(token_docs: Sequence[Sequence[int]], block_size: int, keep_remainder: bool = False,
         extras: Optional[dict] = None) -> Packed:
    """Concatenate documents and cut into `block_size` blocks; only the final remainder is dropped
    (or kept as `tail_ids` with keep_remainder=True). `extras`: per-token lists cut the same way."""
    if block_size <= 0:
        raise ValueError("block_size must be positive")
    lengths = np.fromiter((len(d) for d in token_docs), dtype=np.int64, count=len(token_docs))
    total = int(lengths.sum())
    n_blocks = total // block_size
    flat = np.fromiter((t for d in token_docs for t in d), dtype=np.int64, count=total) if total else np.zeros(0, np.int64)
    used = n_blocks * block_size
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else np.zeros(0, np.int64)
    doc_of = np.repeat(np.arange(len(lengths)), lengths)
    idx = np.arange(total)
    block_start = (idx // block_size) * block_size
    positions = idx - np.maximum(starts[doc_of] if total else idx, block_start)
    out = Packed(flat[:used].reshape(n_blocks, block_size), positions[:used].reshape(n_blocks, block_size),
                 total, total - used)
    if keep_remainder and total > used:
        out.tail_ids, out.tail_positions, out.dropped_tokens = flat[used:], positions[used:], 0
    if extras:
        out.extras, out.tail_extras = {}, {}
        for name, per_doc in extras.items():
            arr = np.fromiter((t for d in per_doc for t in d), dtype=np.int64, count=total) if total \
                else np.zeros(0, np.int64)
            out.extras[name] = arr[:used].reshape(n_blocks, block_size)
            if out.tail_ids is not None:
                out.tail_extras[name] = arr[used:]
    return out


def chunk(token_docs: Sequence[Sequence[int]], block_size: int) -> list[list[int]]:
    """The tutorial's `group_texts`: concatenate and cut into blocks (no position restarts)."""
    return pack(token_docs, block_size).input_ids.tolist()


def truncate(token_docs: Sequence[Sequence[int]], max_length: int) -> tuple[list[list[int]], int]:
    """One example per document, cut at max_length. Returns (examples, how many were cut)."""
    cut = sum(1 for d in token_docs if len(d) > max_length)
    return [list(d[:max_length]) for d in token_docs], cut


KIND = DataKind("documents", "document", read_corpus)
