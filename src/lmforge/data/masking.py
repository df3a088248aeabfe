"""Masked-LM data: blocks with word ids, and masking (token or whole-word) for any fast tokenizer.

Whole-word masking uses the fast tokenizer's word ids (which piece belongs to which
pre-tokenized word), not the ``##`` prefix of WordPiece, so it works the same for WordPiece,
byte-level BPE (``Ġ`` markers), BPE without markers and Unigram/SentencePiece (``▁``).

Documents are concatenated and cut into blocks; every token keeps a word id that is unique
across the whole split, so a block can be masked word by word after chunking and two
documents never share a word.

    ids, labels = mask_batch(input_ids, units, MaskSpec.of(tokenizer, 0.15), np.random.default_rng(seed))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np

IGNORE = -100  # label of every position that is not predicted


# ----------------------------------------------------------------------------------- tokenizer facts
def special_ids(tokenizer) -> list[int]:
    """Ids that are never masked, never predicted and never drawn as random replacements."""
    ids = set(int(i) for i in tokenizer.all_special_ids if i is not None)
    return sorted(ids)


def special_wrap(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after one sequence (e.g. [CLS] / [SEP])."""
    probe = "a"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    n = len(plain)
    for start in range(len(full) - n + 1):
        if full[start:start + n] == plain:
            return full[:start], full[start + n:]
    return [], []


def _offset_word_ids(text: str, offsets: Sequence[tuple[int, int]]) -> list[int]:
    """Word ids from character offsets, for tokenizers whose pre-tokenizer does not split words
    (e.g. a SentencePiece model whose pieces may carry the space after a word): a piece starts
    a new word when whitespace precedes it, begins it, or ends the previous piece."""
    out, word, prev_end, prev_blank = [], -1, None, False
    for s, e in offsets:
        piece = text[s:e]
        if prev_end is None:
            new = True
        else:
            gap = text[prev_end:s]
            new = (any(c.isspace() for c in gap) or piece[:1].isspace()
                   or (prev_end > 0 and text[prev_end - 1].isspace() and not prev_blank))
        word += new
        out.append(word)
        prev_end, prev_blank = e, piece.strip() == ""
    return out


def token_log_frequencies(blocks: Iterable[Sequence[int]], vocab_size: int, special: Sequence[int],
                          smoothing: float = 0.1) -> np.ndarray:
    """log p(token) over the blocks (special tokens excluded), add-`smoothing` counts: the output
    bias a newly initialised MLM head starts from (it then predicts the unigram distribution)."""
    flat = np.fromiter((t for ids in blocks for t in ids), dtype=np.int64)
    counts = np.bincount(flat[flat < vocab_size], minlength=vocab_size).astype(np.float64)
    counts[np.asarray(special, dtype=np.int64)] = 0.0
    counts += smoothing
    return np.log(counts / counts.sum())


def word_ids_work(tokenizer) -> bool:
    """Whether the tokenizer's own word ids separate whitespace-delimited words."""
    enc = tokenizer("one two three four", add_special_tokens=False)
    try:
        ids = enc.word_ids(0)
    except (ValueError, AttributeError):  # slow tokenizer: no word ids
        return False
    return len({w for w in ids if w is not None}) >= 4


# ----------------------------------------------------------------------------------- blocks
def encode_blocks(texts: Iterable[str], tokenizer, block_size: int, remainder: str = "drop",
                  batch: int = 512) -> tuple[list[list[int]], list[list[int]], dict]:
    """Concatenate documents (separated by the tokenizer's sep/eos token) and cut them into blocks.

    Each block is ``prefix + body + suffix`` (the tokenizer's own special tokens, e.g. [CLS] ... [SEP])
    and is at most ``block_size`` tokens long. Returns (input_ids, word_ids, stats); word ids are
    -1 at special tokens and unique across documents.
    """
    prefix, suffix = special_wrap(tokenizer)
    body = block_size - len(prefix) - len(suffix)
    if body < 1:
        raise ValueError(f"block_size {block_size} leaves no room next to {len(prefix) + len(suffix)} special tokens")
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    use_offsets = not word_ids_work(tokenizer)
    ids_stream: list[int] = []
    word_stream: list[int] = []
    next_word, n_docs = 0, 0
    texts = list(texts)
    for start in range(0, len(texts), batch):
        chunk = texts[start:start + batch]
        enc = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=use_offsets, verbose=False)
        for i, ids in enumerate(enc["input_ids"]):
            if not ids:
                continue
            if use_offsets:
                words = _offset_word_ids(chunk[i], enc["offset_mapping"][i])
            else:
                words = [-1 if w is None else w for w in enc.word_ids(i)]
            if n_docs and sep is not None:
                ids_stream.append(sep)
                word_stream.append(-1)
            top = max(words) if words else -1
            ids_stream.extend(ids)
            word_stream.extend(w + next_word if w >= 0 else -1 for w in words)
            next_word += top + 1
            n_docs += 1
    blocks, block_words = [], []
    n_tokens = len(ids_stream)
    full = n_tokens // body
    ends = [(k * body, (k + 1) * body) for k in range(full)]
    if remainder == "pad" and n_tokens % body:
        ends.append((full * body, n_tokens))
    for s, e in ends:
        blocks.append(prefix + ids_stream[s:e] + suffix)
        block_words.append([-1] * len(prefix) + word_stream[s:e] + [-1] * len(suffix))
    dropped = n_tokens - sum(e - s for s, e in ends)
    stats = {"documents": n_docs, "tokens": n_tokens, "blocks": len(blocks), "dropped_tokens": dropped,
             "words": next_word, "word_ids_from_offsets": use_offsets}
    return blocks, block_words, stats


# ----------------------------------------------------------------------------------- masking
@dataclass
class MaskSpec:
    mask_id: int
    probability: float
    whole_word: bool
    special: np.ndarray  # sorted special ids
    pool: np.ndarray  # ids drawn for the 10% random replacement (no special tokens)

    @classmethod
    def of(cls, tokenizer, probability: float = 0.15, whole_word: bool = False,
           vocab_size: Optional[int] = None) -> "MaskSpec":
        special = np.asarray(special_ids(tokenizer), dtype=np.int64)
        n = vocab_size or len(tokenizer)
        pool = np.setdiff1d(np.arange(n, dtype=np.int64), special)
        return cls(int(tokenizer.mask_token_id), probability, whole_word, special, pool)


def units_of(input_ids: np.ndarray, word_ids: Optional[np.ndarray], spec: MaskSpec) -> np.ndarray:
    """Per position, the index of its masking unit within the row (a token, or a whole word); -1 = never masked."""
    maskable = ~np.isin(input_ids, spec.special)
    if spec.whole_word:
        if word_ids is None:
            raise ValueError("whole-word masking needs word ids")
        maskable &= word_ids >= 0
        key = np.where(maskable, word_ids, -1)
        prev = np.concatenate([np.full((key.shape[0], 1), -2), key[:, :-1]], axis=1)
        starts = maskable & (key != prev)
    else:
        starts = maskable
    units = np.cumsum(starts, axis=1) - 1
    return np.where(maskable, units, -1)


def mask_batch(input_ids: np.ndarray, units: np.ndarray, spec: MaskSpec,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Choose units with ``spec.probability``; of the chosen, 80% -> mask token, 10% -> a random
    token, 10% unchanged (decided per unit, so a whole word is treated alike). Labels are the
    original ids at chosen positions and -100 everywhere else."""
    rows, width = input_ids.shape
    n_units = int(units.max()) + 1 if units.size and units.max() >= 0 else 0
    pick = rng.random((rows, max(n_units, 1)))
    action = rng.random((rows, max(n_units, 1)))
    replacement = rng.choice(spec.pool, size=(rows, width))
    safe = np.maximum(units, 0)
    row_idx = np.arange(rows)[:, None]
    chosen = (units >= 0) & (pick[row_idx, safe] < spec.probability)
    act = action[row_idx, safe]
    labels = np.where(chosen, input_ids, IGNORE)
    out = input_ids.copy()
    out[chosen & (act < 0.8)] = spec.mask_id
    rand = chosen & (act >= 0.8) & (act < 0.9)
    out[rand] = replacement[rand]
    return out, labels


def pad_2d(seqs: Sequence[Sequence[int]], value: int) -> np.ndarray:
    width = max((len(s) for s in seqs), default=0)
    out = np.full((len(seqs), width), value, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out


def mask_rows(rows_ids: Sequence[Sequence[int]], rows_words: Optional[Sequence[Sequence[int]]], spec: MaskSpec,
              rng: np.random.Generator, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pad a list of rows and mask them: returns (masked ids, labels, attention mask)."""
    ids = pad_2d(rows_ids, pad_id)
    attn = pad_2d([[1] * len(r) for r in rows_ids], 0)
    words = pad_2d(rows_words, -1) if rows_words is not None else None
    units = units_of(ids, words, spec)
    units = np.where(attn.astype(bool), units, -1)
    masked, labels = mask_batch(ids, units, spec, rng)
    return masked, labels, attn


def mask_fixed(rows_ids: Sequence[Sequence[int]], rows_words: Optional[Sequence[Sequence[int]]], spec: MaskSpec,
               seed: int, pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    """Mask each row once with a generator seeded by (seed, row index): the same rows always get
    the same masks, whatever the batch size or how many rows are kept."""
    out_ids, out_labels = [], []
    for i, ids in enumerate(rows_ids):
        words = [rows_words[i]] if rows_words is not None else None
        masked, labels, _ = mask_rows([ids], words, spec, np.random.default_rng([seed, i]), pad_id)
        out_ids.append(masked[0].tolist())
        out_labels.append(labels[0].tolist())
    return out_ids, out_labels
