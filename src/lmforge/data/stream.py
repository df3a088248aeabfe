"""Corpora bigger than memory: a memory-mapped token cache on disk, built in one pass.

    lmforge prepare examples/scratch-gpt-kjv.yaml     # builds the cache once
    lmforge train examples/scratch-gpt-kjv.yaml       # finds it and starts at once

Documents are read in chunks of a few MB (never the whole corpus), encoded while earlier chunks
are written (byte-level BPE: the exact fast path of data/fastbpe.py in one worker process per
core; other tokenizers: the Rust batch encoder; see data/encoders.py), and appended to two flat
files:

    tokens.bin   every token id, documents back to back (uint16 when the vocabulary fits, else uint32)
    docs.bin     int64 end offset of each document in tokens.bin

The cache folder is named by a fingerprint of (data, tokenizer, settings). It is built under a
fixed ``.partial-<key>`` name with a progress record written every few MB, so a crash resumes
where it stopped; it is renamed into place only when complete, and a later run (or another
rank) memory-maps it instead of tokenizing again. Peak memory is bounded by the chunk size,
whatever the corpus size.

Tokenization matches :func:`lmforge.data.corpus.tokenize_documents`: the tokenizer's own
special tokens, then EOS at the end of each document. Blocks match :func:`corpus.pack`:
position ids restart at each document start and at each block start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import deque
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

from ..errors import LmforgeError
from ..fs import cache_dir, cache_slot, cache_stats, write_json
from . import builtin, encoders
from .cache import CachedEncoding, fingerprint, tokenizer_fingerprint
from .stream_read import CHUNK_BYTES, read_pieces, text_files

log = logging.getLogger("lmforge")

FORMAT = "lmforge-token-cache-v1"
# Counts in this process (tests assert on them): cache hits, builds, resumed builds, documents encoded.
STATS = cache_stats("tokens")  # hits / misses, and builds resumed and documents encoded (tests assert on them)
STATS.setdefault("resumed", 0)
STATS.setdefault("encoded_docs", 0)
STREAM_EVAL_BLOCKS = 1000      # at most this many held-out blocks when streaming without data.eval
CHECKPOINT_BYTES = 64 << 20    # progress record every this many bytes of input


# ----------------------------------------------------------------------------------- fingerprints
def _file_fp(p: Path) -> dict:
    """Path, size, mtime and a hash of the first and last MB: cheap even for many GB."""
    st = p.stat()
    h = hashlib.sha256()
    with open(p, "rb") as f:
        h.update(f.read(1 << 20))
        if st.st_size > 2 << 20:
            f.seek(st.st_size - (1 << 20))
            h.update(f.read(1 << 20))
    return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sample": h.hexdigest()[:16]}


def source_fingerprint(source: str) -> object:
    """What identifies a data source's content without reading all of it."""
    p = Path(str(source)).expanduser()
    if p.is_file() and not builtin.is_builtin(str(source)):
        return _file_fp(p)
    if p.is_dir():
        return [_file_fp(f) for f in text_files(p)]
    if builtin.is_builtin(str(source)):
        return {"builtin": str(source)}
    return {"name": str(source)}


def source_bytes(source: Optional[str]) -> int:
    """Size on disk of a local source (0 for built-in and Hub sources)."""
    if not source:
        return 0
    p = Path(str(source)).expanduser()
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in text_files(p))
    return 0


def should_stream(cfg, source: Optional[str]) -> tuple[bool, str]:
    """(on?, why) for data.streaming: explicit, or automatic above streaming_threshold_mb."""
    d = cfg.data
    size = source_bytes(source)
    if d.streaming is not None:
        return bool(d.streaming), f"data.streaming is {str(d.streaming).lower()}"
    limit = d.streaming_threshold_mb * 1e6
    if size > limit:
        return True, (f"train data is {size / 1e6:,.0f} MB, above data.streaming_threshold_mb "
                      f"({d.streaming_threshold_mb:g} MB)")
    return False, f"train data is {size / 1e6:,.1f} MB, below data.streaming_threshold_mb ({d.streaming_threshold_mb:g} MB)"


# ----------------------------------------------------------------------------------- the cache
class TokenCache:
    """A finished cache: memory-mapped token ids and document ends."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.meta = json.loads((self.path / "meta.json").read_text())
        self.dtype = np.dtype(self.meta["dtype"])
        self.n_tokens = int(self.meta["n_tokens"])
        self.n_docs = int(self.meta["n_docs"])
        self.tokens = (np.memmap(self.path / "tokens.bin", dtype=self.dtype, mode="r", shape=(self.n_tokens,))
                       if self.n_tokens else np.zeros(0, self.dtype))
        self.doc_ends = (np.memmap(self.path / "docs.bin", dtype=np.int64, mode="r", shape=(self.n_docs,))
                         if self.n_docs else np.zeros(0, np.int64))

    def document(self, i: int) -> np.ndarray:
        start = int(self.doc_ends[i - 1]) if i else 0
        return np.asarray(self.tokens[start:int(self.doc_ends[i])])

    def blocks(self, block_size: int, keep_remainder: bool = False) -> "Blocks":
        return Blocks(self, block_size, keep_remainder)


class Blocks:
    """Fixed-size blocks of a token cache, read from the memory map on demand.

    Indexing with an int gives one row (input_ids, position_ids as lists); with a list of ints,
    a dict of columns (what :class:`lmforge.tasks.base.EncodedSplit.take` expects of `rows`).
    """

    def __init__(self, cache: TokenCache, block_size: int, keep_remainder: bool = False,
                 index: Optional[np.ndarray] = None):
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        self.cache, self.block_size = cache, block_size
        self.n_full = cache.n_tokens // block_size
        self.has_tail = keep_remainder and cache.n_tokens % block_size > 0
        self.dropped_tokens = 0 if keep_remainder else cache.n_tokens - self.n_full * block_size
        self.keep_remainder = keep_remainder
        self.index = index  # a subset of the blocks (select), in this order; None = all

    def __len__(self) -> int:
        return len(self.index) if self.index is not None else self.n_full + int(self.has_tail)

    def select(self, indices) -> "Blocks":
        """A view of some of the blocks (as ``datasets.Dataset.select``)."""
        if isinstance(indices, range):
            idx = np.arange(indices.start, indices.stop, indices.step, dtype=np.int64)
        else:
            idx = np.asarray(indices if isinstance(indices, np.ndarray) else list(indices), dtype=np.int64)
        base = self.index[idx] if self.index is not None else idx
        return Blocks(self.cache, self.block_size, self.keep_remainder, base)

    def _length(self, j: int) -> int:
        return self.block_size if j < self.n_full else self.cache.n_tokens - self.n_full * self.block_size

    def lengths(self) -> list[int]:
        if self.index is not None:
            return [self._length(int(j)) for j in self.index]
        out = [self.block_size] * self.n_full
        if self.has_tail:
            out.append(self.cache.n_tokens - self.n_full * self.block_size)
        return out

    def row(self, i: int) -> dict:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        if self.index is not None:
            i = int(self.index[i])
        s = i * self.block_size
        e = min(s + self.block_size, self.cache.n_tokens)
        ids = np.asarray(self.cache.tokens[s:e], dtype=np.int64)
        ends = self.cache.doc_ends
        # document starts inside (s, e): the ends of earlier documents
        lo = int(np.searchsorted(ends, s, side="right"))
        hi = int(np.searchsorted(ends, e, side="left"))
        starts = np.concatenate([[s], np.asarray(ends[lo:hi], dtype=np.int64)])
        idx = np.arange(s, e)
        pos = idx - starts[np.searchsorted(starts, idx, side="right") - 1]
        return {"input_ids": ids.tolist(), "position_ids": pos.tolist()}

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.row(int(key))
        rows = [self.row(int(i)) for i in key]
        return {"input_ids": [r["input_ids"] for r in rows], "position_ids": [r["position_ids"] for r in rows]}

    def iter_blocks(self, start: int = 0, seed: Optional[int] = None) -> Iterator[dict]:
        """Blocks in order from `start` (or a seeded permutation), one at a time: flat memory."""
        order = np.random.default_rng(seed).permutation(len(self)) if seed is not None else range(len(self))
        for k in range(start, len(self)):
            yield self.row(int(order[k]))


def cache_key(source: str, tokenizer, cfg=None, split: str = "train", add_eos: bool = True) -> str:
    d = cfg.data if cfg is not None else None
    settings = {"add_eos": add_eos, "format": getattr(d, "format", None), "text_column": getattr(d, "text_column", None),
                "document_separator": getattr(d, "document_separator", None), "split": split, "v": FORMAT}
    return fingerprint(source_fingerprint(source), tokenizer_fingerprint(tokenizer), settings)


def cache_root() -> Path:
    root = cache_dir() / "tokens"
    root.mkdir(parents=True, exist_ok=True)
    return root


def build_token_cache(source: str, tokenizer, cfg=None, split: str = "train", add_eos: bool = True,
                      progress: bool = False, chunk: int = CHUNK_BYTES, checkpoint_bytes: int = CHECKPOINT_BYTES,
                      stop_after_bytes: Optional[int] = None) -> tuple[TokenCache, bool]:
    """Tokenize `source` into the on-disk cache (or find it there). Returns (cache, hit).

    `stop_after_bytes` stops early leaving a resumable partial build (for tests of resumption).
    """
    key = cache_key(source, tokenizer, cfg, split, add_eos)
    # one builder per key (other ranks wait, then hit); a stopped build stays in slot.partial and resumes
    with cache_slot("tokens", key, lambda p: (p / "meta.json").exists()) as slot:
        if slot.hit:
            return TokenCache(slot.path), True
        done = _build(source, tokenizer, cfg, split, add_eos, slot.partial, progress, chunk, checkpoint_bytes,
                      stop_after_bytes)
        if not done:
            return None, False  # type: ignore[return-value]
        slot.publish()
    return TokenCache(slot.path), False


def _build(source, tokenizer, cfg, split, add_eos, partial: Path, progress: bool, chunk: int,
           checkpoint_bytes: int, stop_after_bytes: Optional[int]) -> bool:
    """Encode `source` into `partial` (resuming a build that was cut off); False when stopped early."""
    if add_eos and tokenizer.eos_token_id is None:
        raise LmforgeError("the tokenizer has no eos token, so documents cannot be ended",
                           "use a tokenizer with an eos token (or set one in its tokenizer_config.json)")
    out = _PartialCache(partial, len(tokenizer), tokenizer.eos_token_id, add_eos, source)
    total = source_bytes(source) or None
    encoder, workers, how = encoders.choose(tokenizer, cfg, total or 0)
    log.info("token cache: encoding with %s", how)
    bar = Progress(TextColumn("[bold]tokenizing {task.description}"), BarColumn(), DownloadColumn(),
                   TransferSpeedColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                   console=Console(stderr=True), disable=not progress)
    since_ckpt, finished = 0, True
    with bar, out, encoders.executor(tokenizer, workers) as pool:
        task = bar.add_task(str(source)[-40:], total=total, completed=out.state["bytes"], info="")
        pieces = read_pieces(source, cfg, split, out.state["cursor"], chunk)
        window: deque = deque()  # pieces being encoded while earlier ones are written (bounded: memory)

        def fill():
            while len(window) < 2 * workers:
                piece = next(pieces, None)
                if piece is None:
                    return
                window.append((pool.submit(encoder, piece.texts), piece))

        fill()
        while window:
            fut, piece = window.popleft()
            flat, lens = fut.result()
            fill()
            out.append(flat, lens, piece)
            since_ckpt += piece.nbytes
            bar.update(task, advance=piece.nbytes,
                       info=f"{out.state['n_tokens']:,} tokens, {out.state['n_docs']:,} docs")
            if since_ckpt >= checkpoint_bytes and not out.open_doc:
                out.checkpoint()
                since_ckpt = 0
            if stop_after_bytes is not None and out.state["bytes"] >= stop_after_bytes:
                finished = False
                break
    if finished:
        out.finish(split)
    return finished


def with_eos(flat: np.ndarray, lens: np.ndarray, ends: np.ndarray, eos: int):
    """(tokens, lengths, end offsets) with EOS after each finished document, unless the tokenizer already
    put one there."""
    n = len(lens)
    last = np.cumsum(lens) - 1
    has_eos = np.zeros(n, bool)
    ok = lens > 0
    has_eos[ok] = flat[last[ok]] == eos
    extra = ends & ~has_eos
    out_lens = lens + extra
    out = np.empty(int(out_lens.sum()), dtype=np.int64)
    out_ends = np.cumsum(out_lens)
    mask = np.ones(out.shape[0], bool)
    mask[(out_ends - 1)[extra]] = False
    out[mask] = flat
    out[~mask] = eos
    return out, out_lens, out_ends


class _PartialCache:
    """The token cache being built in `partial/`: tokens.bin, docs.bin and a progress record, written so
    that a build cut off at any point resumes from its last progress record."""

    def __init__(self, partial: Path, vocab: int, eos: Optional[int], add_eos: bool, source):
        self.partial, self.vocab, self.eos, self.add_eos, self.source = partial, vocab, eos, add_eos, source
        self.dtype = np.dtype(np.uint16 if vocab <= 65536 else np.uint32)
        self.state = {"cursor": {"file": 0, "offset": 0}, "n_tokens": 0, "n_docs": 0, "bytes": 0, "seconds": 0.0,
                      "open_doc": False}
        partial.mkdir(parents=True, exist_ok=True)
        self.prog_file = partial / "progress.json"
        if self.prog_file.exists():
            self.state = json.loads(self.prog_file.read_text())
            STATS["resumed"] += 1
            log.info("resuming the token cache build of %s at %.0f MB (%d documents done)", source,
                     self.state["bytes"] / 1e6, self.state["n_docs"])
        self.open_doc = self.state.get("open_doc", False)
        self.start_t = time.perf_counter() - self.state["seconds"]

    def __enter__(self):
        self.tok_f = open(self.partial / "tokens.bin", "ab")
        self.doc_f = open(self.partial / "docs.bin", "ab")
        # drop anything written after the last progress record
        self.tok_f.truncate(self.state["n_tokens"] * self.dtype.itemsize)
        self.doc_f.truncate(self.state["n_docs"] * 8)
        self.tok_f.seek(0, os.SEEK_END)
        self.doc_f.seek(0, os.SEEK_END)
        return self

    def __exit__(self, *exc):
        self.tok_f.close()
        self.doc_f.close()

    def append(self, flat: np.ndarray, lens: np.ndarray, piece) -> None:
        """Write one encoded piece: its tokens, and the end offsets of the documents it finishes."""
        flat = flat.astype(np.int64, copy=False)
        if len(lens):
            ends = np.asarray(piece.ends, dtype=bool)
            if self.add_eos:
                out, out_lens, out_ends = with_eos(flat, lens, ends, self.eos)
            else:
                out, out_lens, out_ends = flat, lens, np.cumsum(lens)
            self.tok_f.write(out.astype(self.dtype).tobytes())
            self.doc_f.write((self.state["n_tokens"] + out_ends)[ends].astype(np.int64).tobytes())
            self.state["n_tokens"] += int(out_lens.sum())
            self.state["n_docs"] += int(ends.sum())
            STATS["encoded_docs"] += len(lens)
            self.open_doc = not bool(ends[-1])
        self.state["cursor"], self.state["bytes"] = piece.cursor, self.state["bytes"] + piece.nbytes

    def checkpoint(self) -> None:
        """Make what is written durable, then record the position to resume from."""
        self.state["seconds"] = time.perf_counter() - self.start_t
        self.tok_f.flush()
        self.doc_f.flush()
        os.fsync(self.tok_f.fileno())
        os.fsync(self.doc_f.fileno())
        self.state["open_doc"] = self.open_doc
        write_json(self.prog_file, self.state)

    def finish(self, split: str) -> None:
        """Close a last document left open, and write meta.json (the cache is complete)."""
        state = self.state
        if state["n_tokens"] == 0:
            shutil.rmtree(self.partial, ignore_errors=True)
            raise LmforgeError(f"the corpus {self.source} is empty (no non-blank text)",
                               "give a corpus with some text in it")
        if self.open_doc:  # a last document without a proper end: close it
            with open(self.partial / "docs.bin", "ab") as doc_f:
                doc_f.write(np.asarray([state["n_tokens"]], dtype=np.int64).tobytes())
            state["n_docs"] += 1
        seconds = time.perf_counter() - self.start_t
        meta = {"format": FORMAT, "source": str(self.source), "split": split, "dtype": self.dtype.name,
                "n_tokens": state["n_tokens"], "n_docs": state["n_docs"], "bytes": state["bytes"],
                "vocab_size": self.vocab, "eos_token_id": self.eos, "add_eos": self.add_eos,
                "seconds": round(seconds, 3), "mb_per_s": round(state["bytes"] / 1e6 / max(seconds, 1e-9), 2),
                "tokens_per_s": round(state["n_tokens"] / max(seconds, 1e-9), 1)}
        self.prog_file.unlink(missing_ok=True)
        write_json(self.partial / "meta.json", meta)


# ----------------------------------------------------------------------------------- for the tasks
def _marker(source: str) -> Path:
    return cache_root() / f"prepared-{fingerprint(source_fingerprint(source))}.json"


def was_prepared(source: Optional[str]) -> bool:
    """True when `lmforge prepare` built a token cache for this exact data."""
    return bool(source) and _marker(source).exists()


def use_streaming(cfg, source: Optional[str]) -> tuple[bool, str]:
    """should_stream, plus: a cache prepared by `lmforge prepare` for this data is used when streaming is not set."""
    on, why = should_stream(cfg, source)
    if not on and cfg.data.streaming is None and was_prepared(source):
        return True, "a token cache prepared by `lmforge prepare` exists for this data"
    return on, why


def streamed_split(source: str, tokenizer, cfg, block_size: int, keep_remainder: bool = False,
                   split: str = "train", progress: bool = False) -> CachedEncoding:
    """A source's token cache cut into blocks like corpus.pack: `.data` the Blocks, `.info` their facts."""
    cache, hit = build_token_cache(source, tokenizer, cfg, split, progress=progress)
    blocks = cache.blocks(block_size, keep_remainder)
    info = {"total_tokens": cache.n_tokens, "dropped_tokens": blocks.dropped_tokens, "truncated_docs": 0,
            "documents": cache.n_docs, "cache": str(cache.path)}
    if hit:
        log.info("data.streaming: reusing the token cache %s (%s tokens, %s documents)", cache.path,
                 f"{cache.n_tokens:,}", f"{cache.n_docs:,}")
    else:
        m = cache.meta
        log.info("data.streaming: tokenized %s into %s (%s tokens, %s documents, %.0f MB in %.1f s = %.1f MB/s)",
                 source, cache.path, f"{cache.n_tokens:,}", f"{cache.n_docs:,}", m["bytes"] / 1e6, m["seconds"],
                 m["mb_per_s"])
    return CachedEncoding(blocks, info, hit, cache.path.name)


def sample_documents(blocks: "Blocks", tokenizer, n: int = 3, max_tokens: int = 64) -> list[str]:
    """The openings of the first documents that start in `blocks` (for sample prompts)."""
    out = []
    for i in range(min(len(blocks), 50)):
        row = blocks.row(i)
        pos = np.asarray(row["position_ids"])
        ids = np.asarray(row["input_ids"])
        for st in np.flatnonzero(pos == 0)[1:]:
            text = tokenizer.decode(ids[st:st + max_tokens].tolist(), skip_special_tokens=True).strip()
            if text:
                out.append(text)
            if len(out) >= n:
                return out
    return out


def mark_prepared(source: str, cache_path: Path) -> None:
    """Record that `lmforge prepare` built the token cache of `source` (data.streaming: auto then streams it)."""
    write_json(_marker(source), {"source": str(source), "cache": str(cache_path)})
