"""Load tokenizers, and train new ones (BPE, byte-level BPE, WordPiece, Unigram) with `tokenizers`.

    lmforge tokenizer train --files train.txt --type byte-level-bpe --vocab-size 8000 --output tok/
    lmforge tokenizer train --data kjv --type wordpiece --vocab-size 12000 --output tok-wp/

The result is a folder that ``AutoTokenizer.from_pretrained(folder)`` loads as a fast tokenizer,
with the special tokens each type needs set (pad/eos/bos/unk/mask/cls/sep). A training config
reaches the same code through ``tokenizer: {train: {...}}``; such a tokenizer is trained once
and cached under a fingerprint of (data, settings).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

from .config import Permissions
from .data.cache import fingerprint
from .data.corpus import read_corpus
from .data.stream import source_fingerprint
from .errors import LmforgeError, did_you_mean
from .fs import atomic_dir, cache_slot, cache_stats, check_output_dir
from .models.load import model_source
from .models.zoo import resolve_model

log = logging.getLogger("lmforge")

TOKENIZER_TYPES = ("bpe", "byte-level-bpe", "wordpiece", "unigram")

# Special tokens by role, per type. Byte-level BPE covers every byte, so it needs no unk;
# <|endoftext|> separates documents (GPT-2 style). WordPiece is BERT-style, with a [CLS] ... [SEP]
# template. BPE and Unigram use SentencePiece-style names.
SPECIALS = {
    "byte-level-bpe": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<pad>",
                       "mask_token": "<mask>", "cls_token": "<|endoftext|>", "sep_token": "<|endoftext|>"},
    "bpe": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
            "mask_token": "<mask>", "cls_token": "<s>", "sep_token": "</s>"},
    "unigram": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                "mask_token": "<mask>", "cls_token": "<s>", "sep_token": "</s>"},
    "wordpiece": {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                  "mask_token": "[MASK]"},
}


def load_tokenizer(path: str, revision: str | None = None):
    """A fast tokenizer for a model folder or Hub id (``AutoTokenizer``, never ``BertTokenizer(vocab_file)``)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(path, revision=revision)
    except (OSError, ValueError) as e:
        raise LmforgeError(f"could not load a tokenizer from {path}: {str(e).splitlines()[0]}",
                           "the model folder needs tokenizer files (tokenizer.json or vocab files)") from None
    if not getattr(tok, "is_fast", False):
        logging.getLogger("lmforge").warning("tokenizer at %s is not a fast tokenizer; some features are slower", path)
    # Long texts are truncated by lmforge itself; the "sequence longer than max" warning is noise.
    tok.model_max_length = int(min(getattr(tok, "model_max_length", 10**6) or 10**6, 10**6))
    return tok


# ----------------------------------------------------------------------------------- training
@dataclass
class TrainedTokenizer:
    tokenizer: object  # a transformers fast tokenizer
    summary: dict = field(default_factory=dict)
    path: Optional[Path] = None

    def summary_text(self) -> str:
        """The summary as the CLI prints it (see format_summary)."""
        return format_summary(self.summary)


def _unique(seq: Iterable[str]) -> list[str]:
    out: list[str] = []
    for s in seq:
        if s and s not in out:
            out.append(s)
    return out


@dataclass
class Untrained:
    """A tokenizer of one type before training, with its trainer, the roles of its special tokens
    (unk_token -> "[UNK]", ...) and every special token in order."""
    tokenizer: Any
    trainer: Any
    roles: dict
    specials: list[str]


def build_untrained(kind: str, vocab_size: int, min_frequency: int, special_tokens: Sequence[str],
                    lowercase: Optional[bool] = None, show_progress: bool = False) -> Untrained:
    """A tokenizers.Tokenizer of one type and its trainer, before training."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if kind not in TOKENIZER_TYPES:
        raise LmforgeError(f"unknown tokenizer type '{kind}'.{did_you_mean(kind, TOKENIZER_TYPES)}",
                           f"types: {', '.join(TOKENIZER_TYPES)}")
    if vocab_size < 1:
        raise LmforgeError(f"vocab size must be positive, got {vocab_size}")
    roles = dict(SPECIALS[kind])
    specials = _unique(list(roles.values()) + list(special_tokens))
    if kind != "byte-level-bpe" and vocab_size <= len(specials):  # nothing left for the text itself
        raise LmforgeError(f"a vocabulary of {vocab_size} leaves no room beside the {len(specials)} special tokens "
                           f"({', '.join(specials)})", f"use --vocab-size {len(specials) + 100} or more")
    if kind == "byte-level-bpe":
        # 256 byte symbols + the special tokens are the floor of a byte-level vocabulary.
        floor = 256 + len(specials)
        if vocab_size < floor:
            raise LmforgeError(f"a byte-level BPE vocabulary needs at least {floor} entries (256 bytes + specials), "
                               f"got vocab size {vocab_size}", f"use --vocab-size {floor} or more")
        tok = Tokenizer(models.BPE())
        if lowercase:
            tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=show_progress)
    elif kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=roles["unk_token"]))
        norms = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
        tok.normalizer = normalizers.Sequence(norms)
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                      show_progress=show_progress)
    elif kind == "unigram":
        tok = Tokenizer(models.Unigram())
        norms = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
        tok.normalizer = normalizers.Sequence(norms)
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        # The Unigram trainer has no min_frequency; it prunes by likelihood instead.
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials,
                                          unk_token=roles["unk_token"], show_progress=show_progress)
    else:  # wordpiece
        tok = Tokenizer(models.WordPiece(unk_token=roles["unk_token"]))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True if lowercase is None else lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=specials, show_progress=show_progress)
    return Untrained(tok, trainer, roles, specials)


def _finish(tok, kind: str, roles: dict, specials: list[str], model_max_length: Optional[int]):
    """Add the post-processor and wrap as a transformers fast tokenizer."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    if kind == "wordpiece":
        cls, sep = roles["cls_token"], roles["sep_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    elif kind == "byte-level-bpe":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    extra = [s for s in specials if s not in roles.values()]
    kwargs = dict(roles)
    if extra:
        kwargs["additional_special_tokens"] = extra
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length or 10**6,
                                   clean_up_tokenization_spaces=False, **kwargs)
    return fast


def _iter_file_lines(files: Sequence[Path], max_bytes: Optional[int], advance, batch: int = 1000) -> Iterator[list[str]]:
    """Batches of lines from text files (streamed, never the whole file in memory)."""
    seen = 0
    for path in files:
        buf: list[str] = []
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise LmforgeError(f"{path} line {lineno}: not valid UTF-8 (byte 0x{raw[e.start]:02x})",
                                       "re-save the file as UTF-8") from None
                if lineno == 1 and line.startswith("\ufeff"):
                    line = line[1:]
                seen += len(raw)
                advance(len(raw))
                if line.strip():
                    buf.append(line.rstrip("\r\n"))
                if len(buf) >= batch:
                    yield buf
                    buf = []
                if max_bytes and seen >= max_bytes:
                    break
        if buf:
            yield buf
        if max_bytes and seen >= max_bytes:
            return


def _iter_texts(texts: Sequence[str], max_bytes: Optional[int], advance, batch: int = 1000) -> Iterator[list[str]]:
    seen = 0
    for i in range(0, len(texts), batch):
        chunk = [t for t in texts[i:i + batch] if t and t.strip()]
        n = sum(len(t.encode("utf-8")) for t in chunk)
        seen += n
        advance(n)
        yield chunk
        if max_bytes and seen >= max_bytes:
            return


def expand_files(files: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders expanded to their *.txt files (sorted); missing paths are errors."""
    out: list[Path] = []
    for f in files:
        p = Path(f).expanduser()
        if p.is_dir():
            found = sorted(x for x in p.rglob("*") if x.is_file() and x.suffix.lower() in (".txt", ".text"))
            if not found:
                raise LmforgeError(f"folder {p} has no .txt files", "put the training text in .txt files")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise LmforgeError(f"file not found: {f}", "check the path")
    return out


def sample_stats(tokenizer, texts: Sequence[str]) -> dict:
    """Average tokens per word and per byte of `texts` (no special tokens counted)."""
    texts = [t for t in texts if t.strip()]
    if not texts:
        return {"sample_texts": 0}
    enc = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    n_tok = sum(len(e.ids) for e in enc)
    n_words = sum(len(t.split()) for t in texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    unk_id = tokenizer.unk_token_id
    n_unk = sum(e.ids.count(unk_id) for e in enc) if unk_id is not None else 0
    return {"sample_texts": len(texts), "sample_bytes": n_bytes, "sample_tokens": n_tok,
            "tokens_per_word": n_tok / max(1, n_words), "tokens_per_byte": n_tok / max(1, n_bytes),
            "unk_share": n_unk / max(1, n_tok)}


def train_tokenizer(kind: str = "byte-level-bpe", *, files: Optional[Sequence[str | Path]] = None,
                    texts: Optional[Sequence[str]] = None, vocab_size: int = 8000, min_frequency: int = 2,
                    special_tokens: Sequence[str] = (), lowercase: Optional[bool] = None,
                    max_bytes: Optional[int] = None, model_max_length: Optional[int] = None,
                    output: Optional[str | Path] = None, progress: bool = False,
                    sample_size: int = 2000) -> TrainedTokenizer:
    """Train a tokenizer on text files (streamed) or a list of texts; save it to `output` if given.

        >>> tok = train_tokenizer("byte-level-bpe", texts=["hello world"] * 50, vocab_size=300).tokenizer
        >>> tok.decode(tok("hello world")["input_ids"])
        'hello world'
    """
    if output is not None:
        check_output_dir(output, "tokenizer output folder")  # before training; a file there is never moved
    if (files is None) == (texts is None):
        raise LmforgeError("give either files or texts to train a tokenizer on")
    untrained = build_untrained(kind, vocab_size, min_frequency, special_tokens, lowercase)
    tok, trainer, roles, specials = untrained.tokenizer, untrained.trainer, untrained.roles, untrained.specials
    paths = expand_files(files) if files is not None else []
    total = sum(p.stat().st_size for p in paths) if files is not None else sum(len(t.encode("utf-8")) for t in texts)
    if max_bytes:
        total = min(total, max_bytes)
    if total == 0:
        raise LmforgeError("no text to train the tokenizer on", "the input files are empty")
    sample: list[str] = []

    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn
    bar = Progress(TextColumn("[bold]tokenizer: {task.description}"), BarColumn(), DownloadColumn(),
                   TransferSpeedColumn(), TimeElapsedColumn(), console=Console(stderr=True), disable=not progress,
                   transient=False)
    start = time.perf_counter()
    with bar:
        task = bar.add_task(f"reading and counting ({kind}, vocab {vocab_size})", total=total)

        def advance(n: int) -> None:
            bar.advance(task, n)

        batches = (_iter_file_lines(paths, max_bytes, advance) if files is not None
                   else _iter_texts(list(texts), max_bytes, advance))

        sample_bytes = [0]

        def feed() -> Iterator[list[str]]:
            for b in batches:
                # the summary's sample: the first texts, at most sample_size of them and about 1 MB
                for t in b:
                    if len(sample) >= sample_size or sample_bytes[0] >= 1_000_000:
                        break
                    sample.append(t[:1_000_000 - sample_bytes[0]])
                    sample_bytes[0] += len(sample[-1])
                yield b
            bar.update(task, completed=total, description=f"computing the vocabulary ({kind}, vocab {vocab_size})")

        tok.train_from_iterator(feed(), trainer=trainer, length=None)
    seconds = time.perf_counter() - start
    fast = _finish(tok, kind, roles, specials, model_max_length)
    summary = {"type": kind, "vocab_size": len(fast), "requested_vocab_size": vocab_size,
               "min_frequency": min_frequency, "trained_on_bytes": total, "seconds": round(seconds, 2),
               "special_tokens": {k: v for k, v in roles.items()},
               "additional_special_tokens": [s for s in specials if s not in roles.values()]}
    summary.update(sample_stats(fast, sample))
    result = TrainedTokenizer(fast, summary)
    if output is not None:
        result.path = save_tokenizer(fast, Path(output), summary)
    return result


def save_tokenizer(tokenizer, out: Path, summary: Optional[dict] = None) -> Path:
    """Save atomically: a temporary folder next to `out`, then a rename (an existing `out` is replaced)."""
    def write(tmp: Path) -> None:
        tokenizer.save_pretrained(str(tmp))
        if summary is not None:
            (tmp / "lmforge_tokenizer.json").write_text(json.dumps(summary, indent=1))
    return atomic_dir(Path(out), write)


def format_summary(summary: dict) -> str:
    lines = [f"type {summary['type']}, vocab size {summary['vocab_size']:,} (asked {summary['requested_vocab_size']:,}), "
             f"trained on {summary['trained_on_bytes'] / 1e6:.2f} MB in {summary['seconds']:.1f} s"]
    if summary.get("sample_texts"):
        lines.append(f"on a sample of {summary['sample_texts']:,} texts ({summary['sample_bytes'] / 1e3:.0f} kB): "
                     f"{summary['tokens_per_word']:.3f} tokens per word, {summary['tokens_per_byte']:.4f} tokens per byte "
                     f"({1 / max(summary['tokens_per_byte'], 1e-9):.2f} bytes per token), "
                     f"unknown tokens {100 * summary['unk_share']:.2f}%")
    roles = ", ".join(f"{k.removesuffix('_token')}={v}" for k, v in summary["special_tokens"].items())
    lines.append(f"special tokens: {roles}" + (f"; extra: {', '.join(summary['additional_special_tokens'])}"
                                               if summary.get("additional_special_tokens") else ""))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- from a config
def _texts_for_source(source: str, cfg) -> list[str]:
    """Documents of a non-file source (built-in dataset, csv/jsonl/parquet, Hub id)."""
    return list(read_corpus(source, cfg, "train"))


def is_plain_text_source(source: str) -> bool:
    p = Path(source).expanduser()
    return (p.is_file() and p.suffix.lower() in (".txt", ".text")) or p.is_dir()


def train_from_source(kind: str, source: Optional[str] = None, files: Optional[Sequence[str]] = None, cfg=None,
                      **kwargs) -> TrainedTokenizer:
    """Train on files (streamed) or on a data source as a config names it (`--data kjv`, `--data x.jsonl`)."""
    if files:
        return train_tokenizer(kind, files=files, **kwargs)
    if source is None:
        raise LmforgeError("nothing to train the tokenizer on", "give --files FILE ... or --data SOURCE")
    if is_plain_text_source(source):
        return train_tokenizer(kind, files=[source], **kwargs)
    return train_tokenizer(kind, texts=_texts_for_source(source, cfg), **kwargs)


def tokenizer_for_config(cfg, log=log, permissions: Permissions = Permissions()):
    """The tokenizer a run uses: trained per ``tokenizer.train`` (cached), ``tokenizer.name``, or the model's."""
    tcfg = getattr(cfg, "tokenizer", None)
    train_cfg = getattr(tcfg, "train", None) if tcfg is not None else None
    if train_cfg is not None:
        return trained_for_config(cfg, log)
    name = getattr(tcfg, "name", None) if tcfg is not None else None
    if name:
        p = Path(name).expanduser()
        return load_tokenizer(str(p) if p.is_dir() else resolve_model(name))
    if cfg.model.name:
        return load_tokenizer(model_source(cfg, permissions), cfg.model.revision)
    raise LmforgeError("no tokenizer: a model built from a config needs one",
                       "add tokenizer: {train: {type: byte-level-bpe, vocab_size: 8000}} or tokenizer.name: FOLDER")


def trained_for_config(cfg, log=log):
    """Train the config's tokenizer once; later runs with the same data and settings load the cached one."""

    t = cfg.tokenizer.train
    files = list(t.files) if t.files else None
    source = cfg.data.train
    if not files and not source:
        raise LmforgeError("tokenizer.train needs text", "set data.train or tokenizer.train.files")
    if not files and not isinstance(source, str):
        raise LmforgeError("tokenizer.train reads one corpus, and data.train is a mix of sources",
                           "name the text files to train the tokenizer on in tokenizer.train.files")
    data_fp = [source_fingerprint(f) for f in files] if files else source_fingerprint(source)
    settings = t.model_dump(mode="json")
    key = fingerprint(data_fp, settings, cfg.data.text_column, cfg.data.format, "tok-v1")
    ready = lambda p: (p / "tokenizer.json").exists() and (p / "lmforge_tokenizer.json").exists()  # noqa: E731
    # the processes of a multi-process run train it once
    with cache_slot("tokenizers", f"{t.type}-{t.vocab_size}-{key}", ready) as slot:
        out = slot.path
        if slot.hit:
            tok = load_tokenizer(str(out))
            log.info("tokenizer: reusing the %s tokenizer trained earlier (%s, vocab %d)", t.type, out, len(tok))
            tok.lmforge_summary = json.loads((out / "lmforge_tokenizer.json").read_text())
            return tok
        log.info("tokenizer: training a %s tokenizer (vocab %d) on %s", t.type, t.vocab_size,
                 ", ".join(files) if files else source)
        if out.exists():  # LMFORGE_NO_CACHE, or an incomplete entry: replaced
            shutil.rmtree(out, ignore_errors=True)
        res = train_from_source(t.type, source=source, files=files, cfg=cfg, vocab_size=t.vocab_size,
                                min_frequency=t.min_frequency, special_tokens=t.special_tokens, lowercase=t.lowercase,
                                max_bytes=int(t.max_mb * 1e6) if t.max_mb else None, output=out,
                                progress=log.isEnabledFor(logging.INFO) and _interactive())
    for line in format_summary(res.summary).splitlines():
        log.info("tokenizer: %s", line)
    tok = load_tokenizer(str(out))
    tok.lmforge_summary = res.summary
    return tok


def _interactive() -> bool:
    import sys
    return sys.stderr.isatty()


# Counts config-driven tokenizer trainings and cache hits in this process (tests assert on them).
STATS = cache_stats("tokenizers")
