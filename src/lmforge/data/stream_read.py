"""Reading corpora in pieces of a few MB for the token cache (data/stream.py): txt files or
folders (whole-file, per-line or separator-delimited documents), jsonl, and in-memory sources.
A cursor (file index, byte offset) lets a crashed build resume where it stopped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from ..errors import LmforgeError
from . import builtin
from .corpus import read_corpus, separator_pattern
from .sources import TEXT_NAMES, detect_format

CHUNK_BYTES = 4 << 20          # text read per batch


def text_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (".txt", ".text", ".md"))


# ----------------------------------------------------------------------------------- reading
@dataclass
class Piece:
    """Texts read from a source; ``ends[i]`` is False when text i continues in the next piece."""
    texts: list[str]
    ends: list[bool]
    cursor: dict      # where to resume reading after this piece
    nbytes: int       # input bytes consumed by this piece


def _cut(buf: bytes, pattern: Optional[re.Pattern]) -> int:
    """Where to cut a buffer so no document is split: after the last separator (or newline)."""
    if pattern is None:
        return buf.rfind(b"\n") + 1
    last = None
    for m in pattern.finditer(buf):
        last = m
    return last.end() if last else 0


def _bytes_pattern(sep: Optional[str]) -> Optional[re.Pattern]:
    if sep is None:
        return None
    pat = separator_pattern(sep)
    return re.compile(pat.pattern.encode("utf-8"))


def _decode(raw: bytes, path: Path, offset: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LmforgeError(f"{path} near byte {offset + e.start}: not valid UTF-8 (byte 0x{raw[e.start]:02x})",
                           "re-save the file as UTF-8, e.g. iconv -f latin1 -t utf-8 in > out") from None


def _read_text_file(path: Path, fi: int, start: int, sep: Optional[str], whole_file_doc: bool,
                    chunk: int) -> Iterator[Piece]:
    """A text file in chunks cut at document boundaries: one document per line, per separator,
    or (whole_file_doc) the whole file. A document longer than a chunk is cut before a space
    and continued in the next piece (``ends`` False), so memory stays bounded."""
    pattern = None if whole_file_doc else _bytes_pattern(sep)
    str_pattern = None
    if not whole_file_doc and sep is not None:
        str_pattern = separator_pattern(sep)
    with open(path, "rb") as f:
        f.seek(start)
        pos, carry, continued = start, b"", False
        while True:
            raw = f.read(chunk)
            at_eof = len(raw) < chunk
            buf = carry + raw
            if pos == 0 and buf.startswith(b"\xef\xbb\xbf"):
                buf, pos = buf[3:], 3
            if not buf:
                return
            cut = len(buf) if at_eof else (0 if whole_file_doc else _cut(buf, pattern))
            if cut > 0:
                text = _decode(buf[:cut], path, pos).replace("\r\n", "\n")
                if whole_file_doc:
                    # the end of a continued document keeps its leading space and closes it even if empty
                    docs = [text.rstrip()] if continued else ([text.strip()] if text.strip() else [])
                else:
                    parts = text.split("\n") if str_pattern is None else str_pattern.split(text)
                    docs = [d.strip() for d in parts[int(continued):] if d.strip()]
                    if continued:  # the tail of the long document: keep its leading space, close it
                        docs.insert(0, parts[0].rstrip())
                yield Piece(docs, [True] * len(docs), {"file": fi, "offset": pos + cut}, cut)
            else:  # a document longer than the chunk: cut before a space, mark it continued
                space = buf.rfind(b" ")
                cut = space if space > 0 else len(buf)
                text = _decode_prefix(buf[:cut])
                cut = len(text.encode("utf-8"))
                if not continued:
                    text = text.lstrip()
                continued = True
                yield Piece([text], [False], {"file": fi, "offset": pos + cut}, cut)
                pos += cut
                carry = buf[cut:]
                if at_eof and not carry:
                    return
                continue
            continued = False
            pos += cut
            carry = buf[cut:]
            if at_eof and not carry:
                return
            if at_eof:  # what is left after a forced cut: read on (the next read returns b"")
                continue


def _decode_prefix(raw: bytes) -> str:
    """Decode, leaving out an incomplete UTF-8 character at the end."""
    for k in range(4):
        try:
            return raw[:len(raw) - k].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return raw.decode("utf-8", errors="replace")


def _read_jsonl(path: Path, start: int, cfg, chunk: int) -> Iterator[Piece]:
    """JSON lines in chunks of whole lines; the text field is data.text_column or a common name."""
    col = cfg.data.text_column if cfg is not None else None
    with open(path, "rb") as f:
        f.seek(start)
        pos, carry = start, b""
        while True:
            raw = f.read(chunk)
            buf = carry + raw
            if not buf:
                return
            cut = len(buf) if not raw else buf.rfind(b"\n") + 1
            if cut == 0:  # a line longer than the chunk: read on
                carry = buf
                continue
            docs = []
            for line in buf[:cut].split(b"\n"):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise LmforgeError(f"{path} near byte {pos}: not a JSON object ({e.msg})",
                                       "each line must be one JSON object") from None
                if not isinstance(obj, dict):
                    raise LmforgeError(f"{path} near byte {pos}: expected a JSON object, got {type(obj).__name__}")
                if col is None:
                    col = next((k for k in obj if k.lower() in TEXT_NAMES), None)
                    if col is None:
                        raise LmforgeError(f"no text field found in {path}",
                                           f"fields: {', '.join(obj)}; set data.text_column")
                value = obj.get(col)
                if value is not None and str(value).strip():
                    docs.append(str(value).strip())
            pos += cut
            carry = buf[cut:]
            yield Piece(docs, [True] * len(docs), {"file": 0, "offset": pos}, cut)


def _read_in_memory(source: str, cfg, split: str, start: int, chunk: int) -> Iterator[Piece]:
    docs = read_corpus(source, cfg, split)
    i = start
    while i < len(docs):
        j, n = i, 0
        while j < len(docs) and n < chunk:
            n += len(docs[j].encode("utf-8"))
            j += 1
        yield Piece(docs[i:j], [True] * (j - i), {"file": 0, "offset": j}, n)
        i = j


def read_pieces(source: str, cfg, split: str = "train", cursor: Optional[dict] = None,
                chunk: int = CHUNK_BYTES) -> Iterator[Piece]:
    """The documents of a source in pieces of about `chunk` bytes, resumable from a cursor."""
    cursor = cursor or {"file": 0, "offset": 0}
    sep = getattr(cfg.data, "document_separator", None) if cfg is not None else None
    fmt = cfg.data.format if cfg is not None else None
    p = Path(str(source)).expanduser()
    if p.exists() and not builtin.is_builtin(str(source)):
        if p.is_dir():
            files = text_files(p)
            if not files:
                raise LmforgeError(f"the folder {p} has no .txt files", "put one document per .txt file in it")
            for fi in range(cursor["file"], len(files)):
                start = cursor["offset"] if fi == cursor["file"] else 0
                yield from _read_text_file(files[fi], fi, start, sep, sep is None, chunk)
            return
        fmt = detect_format(p, fmt)
        if fmt == "txt":
            yield from _read_text_file(p, 0, cursor["offset"], sep, False, chunk)
            return
        if fmt == "jsonl" and sep is None:
            yield from _read_jsonl(p, cursor["offset"], cfg, chunk)
            return
    yield from _read_in_memory(str(source), cfg, split, cursor["offset"], chunk)
