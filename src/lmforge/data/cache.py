"""Tokenization cache on disk, keyed by a fingerprint of (data, tokenizer, settings).

A second run with the same data, tokenizer and settings loads the encoded Arrow table
(memory-mapped) instead of tokenizing again. Written to a temporary folder and renamed,
so a crash never leaves a half-written cache entry; built under a lock file per entry, so the
processes of a multi-process run build it once (the others wait, then load it) and never
delete or replace an entry another one is reading.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from typing import Any, Callable

import datasets
import pandas as pd

from ..fs import cache_slot, cache_stats

STATS = cache_stats("data")  # hits / misses of this cache in this process (tests assert on them)
INFO_FILE = "lmforge_info.json"  # what the encoding found (tokens, truncations...), kept with the entry


@dataclass
class CachedEncoding:
    """An encoded split from the cache or just built: the Arrow table, what its encoding found, whether it
    came from the cache, and its key (the split's fingerprint)."""
    data: Any  # the Arrow table (a task may wrap it in its own split type)
    info: dict
    hit: bool
    key: str


def fingerprint(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, pd.DataFrame):
            h.update(pd.util.hash_pandas_object(part, index=False).values.tobytes())
            h.update(json.dumps([str(c) for c in part.columns]).encode())
        elif isinstance(part, (bytes, bytearray)):
            h.update(part)
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\x1e")
    return h.hexdigest()[:24]


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    extra = [tokenizer.__class__.__name__, str(tokenizer.all_special_tokens), getattr(tokenizer, "padding_side", "")]
    return fingerprint(text, extra)


def cached_dataset(key: str, build: Callable[[], tuple[datasets.Dataset, dict]], kind: str = "encoded") -> CachedEncoding:
    """The dataset cached under ``key`` (memory-mapped), or `build()` -> (dataset, info), saved with its info
    and loaded back. An empty dataset is returned as built, not cached (an empty Arrow table does not reload)."""
    with cache_slot("data", f"{kind}-{key}", lambda p: (p / "dataset_info.json").exists()) as slot:
        if slot.hit:
            try:
                info_file = slot.path / INFO_FILE
                info = json.loads(info_file.read_text()) if info_file.exists() else {}
                return CachedEncoding(datasets.load_from_disk(str(slot.path)), info, True, key)
            except Exception:  # noqa: BLE001 - a damaged entry: rebuild it
                slot.miss()
        ds, info = build()
        if len(ds) == 0:
            return CachedEncoding(ds, info, False, key)
        shutil.rmtree(slot.partial, ignore_errors=True)
        try:
            ds.save_to_disk(str(slot.partial))
            (slot.partial / INFO_FILE).write_text(json.dumps(info))
            slot.publish()
        except OSError:
            shutil.rmtree(slot.partial, ignore_errors=True)
            return CachedEncoding(ds, info, False, key)  # caching is an optimisation: a full disk must not stop the run
        return CachedEncoding(datasets.load_from_disk(str(slot.path)), info, False, key)
