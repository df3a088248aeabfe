"""The one path every kind of data takes before encoding: read -> check -> mix -> hold out -> cap.

Each data module (labelled texts, corpora, conversations, preference pairs, prompts, query/document
pairs) describes itself with a :class:`DataKind` (its reader, what one row is called, the labels to
stratify by); `read_splits` does the rest the same way for all of them:

- `data.train` (and `data.eval`, `data.test`) is one source, or a list of `{path, weight}` sources
  interleaved with probabilities from `train.seed` (see `mix`);
- without `data.eval`, a seeded share of the training rows is held out (`split.hold_out`);
- `max_train_samples` / `max_eval_samples` count rows (examples, documents, conversations, pairs) of
  a seeded shuffle, before encoding (`cap`).

Everything here works on row indices, so which rows end up where is a function of the data and the
seed alone, and a resumed run reads exactly the rows of the uninterrupted one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from ..config import load_config
from ..errors import LmforgeError
from .kinds import kind_of_source
from .split import hold_out

MIX_STOP = ("first_exhausted", "all_exhausted")
log = logging.getLogger("lmforge")


@dataclass(frozen=True)
class DataKind:
    """What the pipeline needs to know of one kind of data."""
    name: str  # "labelled texts", "documents", "conversations", ...
    noun: str  # what one row is called in messages: "row", "document", "conversation", "pair", ...
    # (source, cfg, split) -> rows: a list, or a DataFrame for tables of labelled texts
    read: Callable[[str, Any, str], Any]
    # rows -> the label of each row, to stratify the held-out split (None: unlabelled)
    labels: Optional[Callable[[Any], Sequence]] = None
    # fewer rows than this: no held-out split (the task holds out otherwise; None = refuse below 2)
    min_rows_to_hold_out: Optional[int] = None


@dataclass
class Source:
    path: str
    weight: float = 1.0


@dataclass
class SourceShare:
    """One source of a mix: rows read, rows that ended up in training, and their share of it."""
    path: str
    weight: float
    rows_read: int
    train_rows: int = 0
    share: float = 0.0


@dataclass
class Splits:
    train: Any
    eval: Any  # None when the kind's min_rows_to_hold_out was not reached (the task holds out itself)
    test: Any = None
    notes: list[str] = field(default_factory=list)
    mix: list[SourceShare] = field(default_factory=list)  # empty for a single source

    def summary(self) -> dict:
        """What the run's summary, the doctor and the report show of the training sources."""
        if not self.mix:
            return {}
        return {"mix": [{"source": s.path, "weight": s.weight, "rows_read": s.rows_read, "train_rows": s.train_rows,
                         "share": round(s.share, 4)} for s in self.mix]}


# ----------------------------------------------------------------------------------- sources
def sources_of(spec, key: str = "data.train") -> list[Source]:
    """The sources of a data key: a single path, or a list of {path, weight} (a bare path weighs 1)."""
    if spec is None:
        return []
    if isinstance(spec, str):
        return [Source(spec)]
    out = []
    for i, item in enumerate(spec):
        if isinstance(item, str):
            out.append(Source(item))
        elif isinstance(item, Source):
            out.append(item)
        elif isinstance(item, dict):
            out.append(Source(str(item["path"]), float(item.get("weight", 1.0))))
        else:  # a pydantic MixSource
            out.append(Source(str(item.path), float(item.weight)))
    if not out:
        raise LmforgeError(f"{key} is an empty list", f"give at least one source in {key}")
    return out


def describe(spec) -> str:
    """A data key in one short phrase for messages: 'a.jsonl', or 'a.jsonl (0.7) + kjv (0.3)'."""
    srcs = sources_of(spec)
    if len(srcs) == 1 and isinstance(spec, str):
        return srcs[0].path
    return " + ".join(f"{s.path} ({s.weight:g})" for s in srcs)


def plain(spec):
    """A data key as JSON: the path, or a list of {path, weight} (for manifest.json)."""
    if spec is None or isinstance(spec, str):
        return spec
    return [{"path": s.path, "weight": s.weight} for s in sources_of(spec)]


def first_path(spec) -> Optional[str]:
    """The first source's path (the one that names a run or a streamed corpus), or None."""
    srcs = sources_of(spec)
    return srcs[0].path if srcs else None


# ----------------------------------------------------------------------------------- rows
def take(rows, indices: Sequence[int]):
    """The rows at `indices`, in that order, from a list or a DataFrame (its attrs kept)."""
    idx = [int(i) for i in indices]
    if isinstance(rows, pd.DataFrame):
        out = rows.iloc[idx].reset_index(drop=True)
        out.attrs = dict(rows.attrs)
        return out
    return [rows[i] for i in idx]


def _concat(parts: list, paths: list[str]):
    if not isinstance(parts[0], pd.DataFrame):
        return [row for p in parts for row in p]
    columns = [sorted(map(str, p.columns)) for p in parts]
    for path, cols in zip(paths[1:], columns[1:]):
        if cols != columns[0]:
            raise LmforgeError(f"the mixed sources {paths[0]} and {path} have different columns after reading "
                               f"({', '.join(columns[0])} vs {', '.join(cols)})",
                               "mix sources of the same shape (both single texts, or both text pairs)")
    out = pd.concat(parts, ignore_index=True)
    attrs = [p.attrs.get("numeric_labels", False) for p in parts]
    if len(set(attrs)) > 1:
        raise LmforgeError(f"the mixed sources {', '.join(paths)} mix integer and text labels",
                           "use the same kind of labels in every source")
    out.attrs = dict(parts[0].attrs)
    return out


def cap_indices(n: int, limit: Optional[int], seed: int) -> list[int]:
    """Positions of the first `limit` of `n` rows after a seeded shuffle (all `n`, in order, without a limit).
    The shuffle is numpy's RandomState(seed).permutation, so it equals pandas' `sample(frac=1, random_state=seed)`."""
    if not limit or limit >= n:
        return list(range(n))
    return np.random.RandomState(seed).permutation(n)[:limit].tolist()


def cap(rows, limit: Optional[int], seed: int):
    """The one cap of every task: `limit` rows of a seeded shuffle of `rows` (a list or a DataFrame)."""
    return take(rows, cap_indices(len(rows), limit, seed))


def mix(sizes: Sequence[int], weights: Sequence[float], seed: int, stop: str = "first_exhausted") -> np.ndarray:
    """Interleave sources of `sizes` rows: each draw picks source i with probability weight_i (seeded by
    `seed`) and takes its next row in a seeded order. `first_exhausted` stops when a picked source has no
    row left (no row is repeated: the weights are the shares); `all_exhausted` starts an exhausted source
    again until every source was used up once (small sources are oversampled), as
    `datasets.interleave_datasets` does. Returns global row indices (source offset + row)."""
    if stop not in MIX_STOP:
        raise LmforgeError(f"data.mix_stop {stop!r} is not one of {', '.join(MIX_STOP)}")
    w = np.asarray(weights, dtype=float)
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise LmforgeError(f"mix weights {list(weights)} must be non-negative numbers with a positive sum",
                           "give each source a weight such as 0.7 and 0.3")
    p = w / w.sum()
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
    rng = np.random.default_rng([seed, 0x6D6978])
    orders = [rng.permutation(n) for n in sizes]
    pos = [0] * len(sizes)
    done = [n == 0 or p[i] == 0 for i, n in enumerate(sizes)]
    picks: list[int] = []
    while True:
        for c in rng.choice(len(sizes), size=4096, p=p):
            if pos[c] == sizes[c]:
                done[c] = True
                if stop == "first_exhausted" or all(done):
                    return np.asarray(picks, dtype=int)
                pos[c] = 0
            picks.append(offsets[c] + int(orders[c][pos[c]]))
            pos[c] += 1


@dataclass
class SourceRows:
    """The rows of one data key, and for a mix which source each row came from."""
    rows: Any
    source_id: np.ndarray  # index into `sources` of each row
    sources: list[Source]
    sizes: list[int]  # rows read from each source


def read_sources(spec, cfg, kind: DataKind, split: str, key: str) -> SourceRows:
    """The rows of one data key, each source read and checked by the kind's reader; a mix is interleaved by
    `mix`."""
    srcs = sources_of(spec, key)
    check_same_kind(srcs, cfg, split, key)
    parts = []
    for i, s in enumerate(srcs):
        try:
            parts.append(kind.read(s.path, cfg, split))
        except LmforgeError as e:
            if len(srcs) == 1:
                raise
            message = e.message if e.message.startswith(s.path) else f"{s.path}: {e.message}"
            raise LmforgeError(f"{key}[{i}]: {message}", e.hint) from None
    sizes = [len(p) for p in parts]
    rows = _concat(parts, [s.path for s in srcs]) if len(parts) > 1 else parts[0]
    source_id = np.repeat(np.arange(len(srcs)), sizes)
    if len(srcs) == 1:
        return SourceRows(rows, source_id, srcs, sizes)
    picks = mix(sizes, [s.weight for s in srcs], cfg.train.seed, getattr(cfg.data, "mix_stop", "first_exhausted"))
    return SourceRows(take(rows, picks), source_id[picks], srcs, sizes)


def check_same_kind(srcs: list[Source], cfg, split: str, key: str) -> None:
    """Sources of one mix must be one kind of data (a conversation file mixed with preference pairs is a mistake,
    even where a reader could make something of both)."""
    if len(srcs) < 2:
        return
    seen = [(s.path, kind_of_source(s.path, cfg, split)) for s in srcs]
    known = [(p, k) for p, k in seen if k is not None]
    for path, k in known[1:]:
        if k != known[0][1]:
            raise LmforgeError(f"{key} mixes different kinds of data: {known[0][0]} holds {known[0][1]}, "
                               f"{path} holds {k}", "mix sources of one kind (all conversations, all pairs, ...)")


# ----------------------------------------------------------------------------------- splits
def read_splits(cfg, kind: DataKind, hold_out_eval: bool = True) -> Splits:
    """Train / eval / test rows of a config's data, by the rules in this module's docstring.

    `hold_out_eval=False`: the task holds out itself (a streamed corpus); eval is None unless data.eval is set.
    """
    d, seed = cfg.data, cfg.train.seed
    if not d.train:
        raise LmforgeError("no training data given", "set data.train (a file, a folder or a built-in dataset)")
    read = read_sources(d.train, cfg, kind, "train", "data.train")
    rows, source_id, srcs, sizes = read.rows, read.source_id, read.sources, read.sizes
    notes: list[str] = []
    if len(srcs) > 1:
        notes.append(f"mixed {len(srcs)} training sources ({describe(d.train)}): {len(rows):,} {kind.noun}s drawn "
                     f"with seed {seed} ({getattr(d, 'mix_stop', 'first_exhausted')})")
    evals = None
    if d.eval:
        evals = read_sources(d.eval, cfg, kind, "eval", "data.eval").rows
    elif hold_out_eval and len(rows) >= (kind.min_rows_to_hold_out or 2):
        labels = kind.labels(rows) if kind.labels is not None else None
        train_idx, eval_idx = hold_out(len(rows), d.validation_split, seed, labels=labels)
        evals = take(rows, eval_idx)
        rows, source_id = take(rows, train_idx), source_id[train_idx]
        notes.append(f"no eval data given: held out {len(evals)} of the {len(rows) + len(evals)} {kind.noun}s "
                     f"({100 * d.validation_split:.0f}%{', stratified' if labels is not None else ''}, seed {seed})")
    elif hold_out_eval and kind.min_rows_to_hold_out is None:
        raise LmforgeError(f"{describe(d.train)} has a single {kind.noun}, so none can be held out for evaluation",
                           f"give data.eval, or more {kind.noun}s")
    keep = cap_indices(len(rows), d.max_train_samples, seed)
    if len(keep) < len(rows):
        notes.append(f"data.max_train_samples: training on {len(keep):,} of {len(rows):,} {kind.noun}s "
                     f"(a seeded shuffle, seed {seed})")
    rows, source_id = take(rows, keep), source_id[keep]
    if evals is not None and d.max_eval_samples and d.max_eval_samples < len(evals):
        notes.append(f"data.max_eval_samples: evaluating on {d.max_eval_samples:,} of {len(evals):,} {kind.noun}s")
        evals = cap(evals, d.max_eval_samples, seed)
    test = read_sources(d.test, cfg, kind, "test", "data.test").rows if d.test else None
    shares = []
    if len(srcs) > 1:
        counts = np.bincount(source_id, minlength=len(srcs))
        shares = [SourceShare(s.path, s.weight, n, int(c), float(c) / max(1, len(rows)))
                  for s, n, c in zip(srcs, sizes, counts)]
        notes.append("training share by source: " + ", ".join(
            f"{s.path} {100 * s.share:.1f}% ({s.train_rows:,} of {s.rows_read:,} read)" for s in shares))
    return Splits(rows, evals, test, notes, shares)


def eval_rows(rows, overrides, seed: int):
    """The rows `lmforge eval --data` scores: all of them. The run's data.max_eval_samples is not inherited;
    only a cap given with this evaluation's own overrides (--data.max_eval_samples N) applies."""
    limit = load_config(None, overrides).data.max_eval_samples if overrides else None
    kept = cap(rows, limit, seed)
    log.info("evaluating %s of %s rows%s", f"{len(kept):,}", f"{len(rows):,}",
             f" (--data.max_eval_samples {limit}, a seeded shuffle)" if len(kept) < len(rows) else "")
    return kept


def eval_keep(n: int, cfg) -> list[int]:
    """Positions of the eval rows data.max_eval_samples keeps of `n` (a seeded shuffle; all when unset)."""
    return cap_indices(n, cfg.data.max_eval_samples, cfg.train.seed)


def refuse_train_cap(cfg, why: str) -> None:
    """data.max_train_samples where the rows are not read into memory: a one-line error, never ignored."""
    if cfg.data.max_train_samples:
        raise LmforgeError(f"data.max_train_samples counts rows, which {why}",
                           "use train.max_steps to train on part of the data, or unset data.max_train_samples")


HELD_OUT = "held-out"
"""`lmforge eval RUN --data held-out`: the eval rows the run held out of data.train (data.validation_split),
recomputed: the hold-out (and the run's data.max_eval_samples cap) is a function of the data and the seed, so they
are the rows the run evaluated."""


def read_eval_rows(source, cfg, kind: DataKind, limit: Optional[int] = None):
    """The rows of a data key read for `lmforge eval` (one source or a mix, or HELD_OUT), capped only when asked."""
    if source == HELD_OUT:
        rows = read_splits(cfg, kind).eval
        if rows is None or not len(rows):
            raise LmforgeError("--data held-out: this run held no eval rows out of data.train",
                               "pass --data FILE or a built-in dataset")
        return cap(rows, limit, cfg.train.seed) if limit else rows
    rows = read_sources(source, cfg, kind, "eval", "--data").rows
    return cap(rows, limit, cfg.train.seed) if limit else rows
