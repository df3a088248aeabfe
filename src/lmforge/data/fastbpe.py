"""A faster, exact encoder for byte-level BPE tokenizers (GPT-2 style), for bulk preprocessing.

The Rust tokenizer re-runs BPE merges for every word and builds a rich ``Encoding`` object per
text; on a laptop CPU that is ~2 MB/s per core. Natural text repeats its words, so this encoder
splits text with the same pre-tokenizer regex, maps each distinct word to its token ids once
(asking the real tokenizer), and assembles the ids of a whole chunk with numpy. Output is
identical to ``tokenizer.encode(text).ids`` by construction: it is only used for tokenizers
whose pipeline is exactly "no normalizer, ByteLevel pre-tokenizer with the GPT-2 regex, BPE
without dropout, no special tokens added", and a chunk that contains a special token's text
goes to the real tokenizer instead.

Most texts need no regex at all: in a text whose only whitespace is single spaces, every
pre-token boundary the GPT-2 regex finds inside a space-delimited segment stays inside it, and
each space starts the pre-token after it. So ``text.split(" ")`` cuts the text into segments whose
ids (the ids of " " + segment, or of the bare first segment) concatenate to the ids of the whole
text; those segments repeat as words do and are looked up in the table. Texts with other
whitespace (tabs, newlines, runs of spaces, non-breaking spaces) take the regex path.
"""

from __future__ import annotations

import json
from typing import Optional, Sequence

import numpy as np

# The ByteLevel pre-tokenizer's regex (tokenizers, GPT-2).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_ASCII_OTHER_SPACE = ("  ", "\n", "\t", "\r", "\x0b", "\x0c")  # whitespace other than single spaces
MAX_WORDS = 1_000_000  # forget the word table beyond this many distinct words (bounded memory)


def supported(tokenizer) -> bool:
    """Whether `tokenizer` (transformers fast tokenizer or tokenizers.Tokenizer) can use this encoder."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    try:
        spec = json.loads(backend.to_str())
    except Exception:
        return False
    pre, model, post = spec.get("pre_tokenizer") or {}, spec.get("model") or {}, spec.get("post_processor")
    if spec.get("normalizer") is not None:
        return False
    if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or not pre.get("use_regex", True):
        return False
    if model.get("type") != "BPE" or model.get("dropout") not in (None, 0, 0.0):
        return False
    if post is not None and post.get("type") != "ByteLevel":
        probe = backend.encode("a b", add_special_tokens=True).ids
        if probe != backend.encode("a b", add_special_tokens=False).ids:
            return False  # the post-processor adds tokens (BOS...): leave it to the real tokenizer
    try:
        import regex  # noqa: F401  (transformers depends on it)
    except ImportError:
        return False
    return True


def flatten(ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(all ids back to back, count per text) of per-text id lists."""
    lens = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter((t for x in ids for t in x), dtype=np.int64, count=int(lens.sum()))
    return flat, lens


class _Table(dict):
    """word key -> row in the encoder's id table; a missing key is encoded with the real tokenizer."""

    def __init__(self, owner: "ByteLevelEncoder"):
        super().__init__()
        self.owner = owner

    def __missing__(self, key: str) -> int:
        o = self.owner
        piece = key[1:] if key[:1] in ("\n", "\t") else " " + key
        ids = o.tok.encode(piece, add_special_tokens=False).ids if piece else []
        j = self[key] = len(o.starts)
        o.starts.append(len(o.flat))
        o.lens.append(len(ids))
        o.flat.extend(ids)
        return j


class ByteLevelEncoder:
    def __init__(self, tokenizer_json: str):
        import regex
        from tokenizers import Tokenizer
        self.tok = Tokenizer.from_str(tokenizer_json)
        self.tok.no_truncation()
        self.tok.no_padding()
        spec = json.loads(tokenizer_json)
        self.specials = [t["content"] for t in spec.get("added_tokens", [])]
        self.findall = regex.compile(GPT2_PATTERN).findall
        # whitespace other than a single space (by the regex's own \s), or two spaces in a row
        self.other_space = regex.compile(r"[^\S ]|  ").search
        self._reset()

    def _reset(self) -> None:
        self.word_id = _Table(self)
        self.flat: list[int] = []
        self.starts: list[int] = []
        self.lens: list[int] = []
        self._starts_np = self._lens_np = self._flat_np = np.zeros(0, np.int64)

    def _real(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return flatten([e.ids for e in self.tok.encode_batch_fast(list(texts), add_special_tokens=True)])

    def _spaced(self, texts: Sequence[str], joined: str) -> list[bool]:
        """For each text: is a single space its only whitespace? (str tests answer exactly and fast
        for ASCII, the regex for the rest; one test of the whole batch, `joined` by "\\x00" (not
        whitespace), when all texts are.)"""
        if joined.isascii():
            if not any(x in joined for x in _ASCII_OTHER_SPACE):
                return [True] * len(texts)
        elif self.other_space(joined) is None:
            return [True] * len(texts)
        other_space = self.other_space  # below: the tests of _ASCII_OTHER_SPACE, spelled out for speed
        return [not ("  " in t or "\n" in t or "\t" in t or "\r" in t or "\x0b" in t or "\x0c" in t)
                if t.isascii() else other_space(t) is None for t in texts]

    def _words(self, texts: Sequence[str], joined: str) -> tuple[list[str], list[int]]:
        """The table keys of a batch of texts, back to back, and how many belong to each text.

        Keys: "\n" + first segment (encoded bare), other segments (encoded as " " + segment),
        "\t" + regex pre-token (encoded as is). A segment never contains whitespace, so the three
        kinds of key cannot collide. A run of spaced texts is split in one call: joined by " \n",
        each text's first segment comes out with its "\n" already in front.
        """
        spaced, findall = self._spaced(texts, joined), self.findall
        words: list[str] = []
        counts: list[int] = []
        i, n = 0, len(texts)
        while i < n:
            j = i + 1
            while j < n and spaced[j] == spaced[i]:
                j += 1
            run = texts[i:j]
            if spaced[i]:
                words += ("\n" + " \n".join(run)).split(" ")
                counts += [t.count(" ") + 1 for t in run]
            else:
                for t in run:
                    w = ["\t" + x for x in findall(t)]
                    words += w
                    counts.append(len(w))
            i = j
        return words, counts

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(all token ids back to back, token count per text) for a batch of texts."""
        joined = "\x00".join(texts)
        if any(s in joined for s in self.specials):  # (a false alarm only costs speed)
            return self._real(texts)
        words, counts = self._words(texts, joined)
        if len(self.word_id) > MAX_WORDS:
            self._reset()
        # word -> row of the table; a word not seen before is encoded once (_Table.__missing__)
        wid = np.fromiter(map(self.word_id.__getitem__, words), dtype=np.int64, count=len(words))
        if len(self._starts_np) != len(self.starts):  # new words since the last batch
            self._starts_np = np.asarray(self.starts, dtype=np.int64)
            self._lens_np = np.asarray(self.lens, dtype=np.int64)
            self._flat_np = np.asarray(self.flat, dtype=np.int64)
        starts = self._starts_np[wid]
        lens = self._lens_np[wid]
        total = int(lens.sum())
        # ragged gather: for word i, flat[starts[i] : starts[i] + lens[i]]
        cum = np.zeros(len(lens) + 1, dtype=np.int64)
        np.cumsum(lens, out=cum[1:])
        idx = np.repeat(starts - cum[:-1], lens) + np.arange(total, dtype=np.int64)
        flat = self._flat_np[idx] if total else np.zeros(0, np.int64)
        counts_np = np.asarray(counts, dtype=np.int64)
        word_end = np.cumsum(counts_np)
        per_text = cum[word_end] - cum[word_end - counts_np]
        return flat, per_text


# ----------------------------------------------------------------------------------- worker processes
_WORKER: Optional[ByteLevelEncoder] = None


def _init_worker(tokenizer_json: str) -> None:
    global _WORKER
    _WORKER = ByteLevelEncoder(tokenizer_json)


def _work(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    flat, lens = _WORKER.encode(texts)
    return flat.astype(np.uint32), lens
