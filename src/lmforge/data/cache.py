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
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import datasets
import pandas as pd

from ..fs import cache_dir, locked, reuse_cache

# Counts cache hits/misses in this process (tests assert on them).
STATS = {"hits": 0, "misses": 0}


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


def cached_dataset(key: str, build: Callable[[], datasets.Dataset], kind: str = "encoded") -> tuple[datasets.Dataset, bool]:
    """Load the dataset cached under ``key`` or build, save and load it. Returns (dataset, hit)."""
    root = cache_dir() / "data"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{kind}-{key}"
    with locked(root / f".lock-{kind}-{key}"):
        if reuse_cache() and (final / "dataset_info.json").exists():
            try:
                ds = datasets.load_from_disk(str(final))
                STATS["hits"] += 1
                return ds, True
            except Exception:  # a damaged entry: rebuild it
                shutil.rmtree(final, ignore_errors=True)
        STATS["misses"] += 1
        ds = build()
        tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-{key}-", dir=root))
        try:
            ds.save_to_disk(str(tmp))
            if final.exists():
                shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            return ds, False  # caching is an optimisation: a full disk must not stop the run
        return datasets.load_from_disk(str(final)), False
