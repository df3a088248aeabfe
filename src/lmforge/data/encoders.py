"""The encoders behind the token cache (data/stream.py): which one a tokenizer gets, and the worker
processes that run the byte-level fast path (data/fastbpe.py) on several cores.

Worker processes are spawned (a fresh interpreter each: never a fork of a process holding
threads, as torch and the Rust tokenizer do). A spawned child normally re-imports the parent's
main script, which runs it again when the script has no ``if __name__ == "__main__":`` guard
(a common thing in a notebook-turned-script); here the children are started with the main
script hidden, so they import lmforge and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import numpy as np

from ..errors import LmforgeError
from . import fastbpe
from .fastbpe import flatten

POOL_MIN_BYTES = 32 << 20  # below this, worker processes cost more than they save
# A worker is replaced by a fresh process after this many pieces (~400 MB of text): a long-lived
# worker slowed down (4 GB run: from ~30 to ~20 MB/s; with replacement it stayed at 26-30), and
# a fresh one costs only its word table's warm-up.
WORKER_TASKS = 100


def plain_backend(tokenizer):
    """The Rust tokenizer without truncation or padding (a loaded tokenizer.json may carry them)."""
    from tokenizers import Tokenizer
    bt = getattr(tokenizer, "backend_tokenizer", None)
    if bt is None:
        return None
    bt = Tokenizer.from_str(bt.to_str())
    bt.no_truncation()
    bt.no_padding()
    return bt


def rust_encoder(tokenizer) -> Callable:
    backend = plain_backend(tokenizer)

    def encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if backend is not None:
            ids = [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=True)]
        else:
            ids = tokenizer(texts, add_special_tokens=True, return_attention_mask=False)["input_ids"]
        return flatten(ids)
    return encode


def choose(tokenizer, cfg, total: int) -> tuple[Callable, int, str]:
    """(encode function, parallel workers, description): the exact fast byte-level path in worker
    processes for big inputs, in this process for small ones, else the Rust batch encoder."""
    workers = (getattr(cfg.data, "num_proc", None) if cfg is not None else None) or os.cpu_count() or 1
    if fastbpe.supported(tokenizer):
        if workers > 1 and total >= POOL_MIN_BYTES:
            return fastbpe._work, workers, f"the byte-level fast path in {workers} processes"
        enc = fastbpe.ByteLevelEncoder(tokenizer.backend_tokenizer.to_str())
        return enc.encode, 1, "the byte-level fast path in this process"
    return rust_encoder(tokenizer), 1, "the Rust batch encoder (all cores)"


@contextlib.contextmanager
def _main_script_hidden():
    """No __file__ / __spec__ on __main__ meanwhile, so processes spawned then do not re-run it."""
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            main.__spec__ = None
        yield
    finally:
        if main is not None:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)


class WorkerPool:
    """Spawned processes running the byte-level fast path; ``submit(fn, texts)`` as an executor
    (use it as a context manager). A worker that dies (killed for memory, say) becomes an
    LmforgeError at ``result()``."""

    def __init__(self, tokenizer, workers: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=fastbpe._init_worker,
                                        initargs=(tokenizer.backend_tokenizer.to_str(),),
                                        max_tasks_per_child=WORKER_TASKS)
        self._hidden = _main_script_hidden()

    def submit(self, fn: Callable, *args) -> Future:
        return _Checked(self.pool.submit(fn, *args))

    def __enter__(self) -> "WorkerPool":
        # hidden for the pool's whole life: it starts processes in submit and, replacing retired
        # workers, in its own thread
        self._hidden.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.pool.shutdown(wait=True, cancel_futures=True)
        finally:
            self._hidden.__exit__(None, None, None)


class _Checked:
    def __init__(self, fut: Future):
        self.fut = fut

    def result(self):
        from concurrent.futures.process import BrokenProcessPool
        try:
            return self.fut.result()
        except BrokenProcessPool:
            raise LmforgeError("a tokenizer worker process died (killed for memory?)",
                               "run again: the build resumes from its last progress record; or set "
                               "data.num_proc 1 to tokenize in this process") from None


def executor(tokenizer, workers: int):
    return WorkerPool(tokenizer, workers) if workers > 1 else ThreadPoolExecutor(1)
