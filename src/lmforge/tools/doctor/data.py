"""`lmforge doctor`'s data checks: rows, empty texts, duplicates, missing or mixed labels, label
balance, labels unseen in training, and evaluation rows that leak from the training data."""

from __future__ import annotations

import json
from typing import Optional

import numpy as np

from ...data import sources
from ...data.chat import read_conversations
from ...data.corpus import read_corpus
from ...data.pipeline import mix, sources_of
from ...data.preference import read_pairs
from ...data.prompts import read_prompts
from ...data.retrieval import corpus_of, read_query_docs
from ...errors import LmforgeError
from ...tasks import get_task
from .output import Out, err


def _check_table(out: Out, source: str, cfg, split: str) -> Optional[dict]:
    """Rows, empty texts, duplicates and labels of one table split (classification)."""
    df = sources.read_table(source, cfg.data.format, split)
    d = cfg.data
    text_col, pair_col = sources.pick_text_columns(df, d.text_column, d.text_pair_column, source)
    label_col = sources.pick_column(df, d.label_column, sources.LABEL_NAMES, "label", source, "data.label_column")
    n = len(df)
    texts = df[text_col]
    empty = texts.isna() | texts.astype(str).str.strip().eq("")
    info = {"rows": n, "source": source}
    pair = f", text pair column '{pair_col}'" if pair_col else ""
    out.ok(f"{split}: {source}: {n:,} rows, text column '{text_col}'{pair}, label column '{label_col}'")
    if empty.any():
        rows = [int(i) + 1 for i in empty.to_numpy().nonzero()[0][:5]]
        out.problem(f"{split} ({source}): {int(empty.sum())} rows with empty text (rows {', '.join(map(str, rows))}) "
                    "— remove or fill them")
    key = texts.astype(str) + ("\x1f" + df[pair_col].astype(str) if pair_col else "")
    dup = key[~empty].duplicated()
    if dup.any():
        out.warn(f"{split} ({source}): {int(dup.sum())} duplicate texts ({100 * dup.mean():.1f}%) — "
                 "duplicates weigh those examples more; drop them unless intended")
    labels = df[label_col]
    bad = labels.isna() | labels.astype(str).str.strip().eq("") | labels.astype(str).str.lower().eq("nan")
    if bad.any():
        rows = [int(i) + 1 for i in bad.to_numpy().nonzero()[0][:5]]
        out.problem(f"{split} ({source}): {int(bad.sum())} rows with a missing or NaN label (rows "
                    f"{', '.join(map(str, rows))}) — fill or drop them")
    good = labels[~bad]
    kinds = {type(v).__name__ for v in good.tolist()}
    numeric = all(isinstance(v, int) or (isinstance(v, float) and float(v).is_integer()) for v in good.tolist())
    if len(kinds) > 1 and not numeric:
        out.problem(f"{split} ({source}): column '{label_col}' mixes label types ({', '.join(sorted(kinds))}) — "
                    "use either all strings or all integers")
    as_text = [str(int(v)) if numeric and not isinstance(v, str) else str(v) for v in good.tolist()]
    counts: dict[str, int] = {}
    for v in as_text:
        counts[v] = counts.get(v, 0) + 1
    info["labels"] = counts
    if pair_col is None:
        conflicting = df[~bad & ~empty].groupby(texts.astype(str))[label_col].nunique()
        n_conf = int((conflicting > 1).sum())
        if n_conf:
            out.warn(f"{split} ({source}): {n_conf} texts appear with different labels — check the labelling")
    info["texts"] = set(key[~empty].tolist())
    return info


def _label_balance(out: Out, train: dict, others: list[dict]) -> None:
    counts = train["labels"]
    total = sum(counts.values()) or 1
    shown = sorted(counts.items(), key=lambda kv: -kv[1])
    out.info("label balance (train): " + ", ".join(f"{k} {v} ({100 * v / total:.0f}%)" for k, v in shown[:12])
             + (f", ... ({len(shown)} labels)" if len(shown) > 12 else ""))
    if len(counts) < 2:
        out.problem(f"train ({train['source']}): only one class ({next(iter(counts), 'none')!r}) — a classifier "
                    "needs at least two")
    elif shown[0][1] / max(1, shown[-1][1]) >= 10:
        out.warn(f"train: labels are imbalanced ({shown[0][0]!r} {shown[0][1]} vs {shown[-1][0]!r} {shown[-1][1]}) "
                 "— watch f1_macro / mcc rather than accuracy")
    for o in others:
        unseen = sorted(set(o["labels"]) - set(counts))
        if unseen:
            out.problem(f"{o['split']} ({o['source']}): label(s) {', '.join(map(repr, unseen[:5]))} never appear in "
                        "the training data — fix the labels or add training rows")
        overlap = len(o["texts"] & train["texts"])
        if overlap:
            out.warn(f"{o['split']} ({o['source']}): {overlap} texts also appear in the training data "
                     "(evaluation leaks into training)")


def _check_corpus(out: Out, source: str, cfg, split: str) -> Optional[dict]:
    """Documents of a language-model corpus split."""
    docs = read_corpus(source, cfg, split)
    n_dup = len(docs) - len(set(docs))
    out.ok(f"{split}: {source}: {len(docs):,} documents, {sum(len(x) for x in docs):,} characters")
    if n_dup:
        out.warn(f"{split} ({source}): {n_dup} duplicate documents ({100 * n_dup / len(docs):.1f}%) — "
                 "duplicates are learnt by heart; deduplicate unless intended")
    return {"rows": len(docs), "source": source, "texts": set(docs)}


def _check_conversations(out: Out, source: str, cfg, split: str) -> Optional[dict]:
    """Conversations of a chat dataset: their number, turns, and those without an assistant reply."""
    convs = read_conversations(source, cfg, split)
    no_reply = sum(not any(m["role"] == "assistant" for m in c) for c in convs)
    turns = sum(len(c) for c in convs)
    out.ok(f"{split}: {source}: {len(convs):,} conversations, {turns:,} turns")
    if no_reply:
        out.warn(f"{split} ({source}): {no_reply} conversations have no assistant reply (nothing to train on "
                 "with data.train_on: assistant); they will be dropped")
    texts = {json.dumps(c, sort_keys=True) for c in convs}
    return {"rows": len(convs), "source": source, "texts": texts}


def _check_pairs(out: Out, source: str, cfg, split: str) -> Optional[dict]:
    """Preference pairs: their number, and those whose chosen and rejected replies are the same."""
    pairs = read_pairs(source, cfg, split)
    same = sum(p.chosen == p.rejected for p in pairs)
    out.ok(f"{split}: {source}: {len(pairs):,} preference pairs")
    if same:
        out.warn(f"{split} ({source}): {same} pairs have identical chosen and rejected replies (nothing to learn); "
                 "they will be dropped")
    texts = {json.dumps([p.prompt, p.chosen, p.rejected], sort_keys=True) for p in pairs}
    return {"rows": len(pairs), "source": source, "texts": texts}


def _check_prompts(out: Out, source: str, cfg, split: str) -> Optional[dict]:
    """Prompts for online RL: their number, the columns the reward functions get, and whether the answer column
    the built-in rewards compare with is there."""
    rows = read_prompts(source, cfg, split)
    cols = list(dict.fromkeys(k for r in rows for k in r.columns))
    out.ok(f"{split}: {source}: {len(rows):,} prompts; columns for the reward functions: {', '.join(cols) or 'none'}")
    answer = cfg.grpo.answer_column
    needs = [r for r in cfg.grpo.rewards if r in ("exact_match", "contains", "number_match")]
    if needs and answer not in cols:
        out.problem(f"{split} ({source}): the rewards {', '.join(needs)} compare with the column '{answer}', which the "
                    "data lacks — set grpo.answer_column or add the column")
    elif answer in cols:
        missing = sum(r.columns.get(answer) is None for r in rows)
        if missing:
            out.warn(f"{split} ({source}): {missing} prompts have no '{answer}' (their built-in rewards are None)")
    texts = {json.dumps(r.prompt, sort_keys=True) for r in rows}
    return {"rows": len(rows), "source": source, "texts": texts}


def _merged(infos: list[dict], split: str) -> dict:
    """One split's findings over the sources of a mix."""
    out = {"rows": sum(i["rows"] for i in infos), "source": " + ".join(i["source"] for i in infos), "split": split,
           "texts": set().union(*(i["texts"] for i in infos))}
    if all("labels" in i for i in infos):
        out["labels"] = {}
        for i in infos:
            for k, v in i["labels"].items():
                out["labels"][k] = out["labels"].get(k, 0) + v
    return out


def _mix_preview(out: Out, cfg, split: str, spec, sizes: list[int]) -> None:
    """Rows each source of a mix contributes and its realised share (the same draw as the run's)."""
    srcs = sources_of(spec)
    try:
        picks = mix(sizes, [s.weight for s in srcs], cfg.train.seed, cfg.data.mix_stop)
    except LmforgeError as e:
        out.problem(err(e))
        return
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    counts = np.bincount(np.searchsorted(offsets, picks, side="right") - 1, minlength=len(srcs))
    out.info(f"{split} mix ({cfg.data.mix_stop}, seed {cfg.train.seed}): {len(picks):,} rows drawn — " + ", ".join(
        f"{s.path}: {int(c):,} of {n:,} rows, {100 * c / max(1, len(picks)):.1f}% (weight {s.weight:g})"
        for s, c, n in zip(srcs, counts, sizes)))


def _check_retrieval(out: Out, source: str, cfg, split: str) -> Optional[dict]:
    """Query/document pairs: rows, negatives, scores, and the retrieval problem they make (unique queries and
    documents, queries without a relevant document)."""
    rows = read_query_docs(source, cfg, split)
    corpus = corpus_of(rows)
    negs = sum(len(r.negatives) for r in rows)
    scored = sum(r.score is not None for r in rows)
    out.ok(f"{split}: {source}: {len(rows):,} query/document rows; {len(corpus.queries):,} distinct queries, "
           f"{len(corpus.documents):,} distinct documents" + (f", {negs:,} negatives" if negs else "")
           + (f", {scored:,} rows with a score" if scored else ""))
    none = sum(not rel for rel in corpus.relevant)
    if none:
        out.warn(f"{split} ({source}): {none} queries have no relevant document (every score is 0 or below): "
                 "retrieval metrics skip them, the embedding task does not train on them")
    if split != "train" and len(corpus.documents) > 100_000:
        out.warn(f"{split} ({source}): {len(corpus.documents):,} documents: exact search at each evaluation gets "
                 "slow; cap data.max_eval_samples (or use an approximate index such as faiss outside lmforge)")
    texts = {json.dumps([r.query, r.document], sort_keys=True) for r in rows}
    return {"rows": len(rows), "source": source, "texts": texts}


CHECKS = {"table": _check_table, "corpus": _check_corpus, "conversations": _check_conversations,
          "pairs": _check_pairs, "prompts": _check_prompts, "retrieval": _check_retrieval}


def check_data(out: Out, cfg) -> bool:
    """Returns True when the data could be read (the task's setup can run)."""
    d = cfg.data
    kind = get_task(cfg.task).data_kind  # rows with labels, documents, or conversations
    tables = kind == "table"
    if not d.train:
        out.problem("no training data given — set data.train (a file, folder or built-in dataset)")
        return False
    found, readable = {}, True
    for split, spec in (("train", d.train), ("eval", d.eval), ("test", d.test)):
        infos = []
        for src in sources_of(spec, f"data.{split}"):
            try:
                infos.append(CHECKS[kind](out, src.path, cfg, split))
            except LmforgeError as e:
                out.problem(err(e))
                readable = False
            except ImportError as e:
                out.warn(f"{split}: cannot check this data here ({e})")
        if infos and len(infos) == len(sources_of(spec)):
            found[split] = _merged(infos, split)
            if len(infos) > 1:
                _mix_preview(out, cfg, split, spec, [i["rows"] for i in infos])
    if tables and "train" in found:
        _label_balance(out, found["train"], [found[s] for s in ("eval", "test") if s in found])
    elif "train" in found:
        for s in ("eval", "test"):
            if s in found and found[s]["texts"] & found["train"]["texts"]:
                out.warn(f"{s}: {len(found[s]['texts'] & found['train']['texts'])} documents also appear in the "
                         "training data (evaluation leaks into training)")
    if not d.eval and "train" in found:
        out.info(f"no eval data: {100 * d.validation_split:.0f}% of train is held out (seed {cfg.train.seed})")
    return readable
