"""The tokenization cache shared by the processes of one run (and by runs side by side)."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import os, sys, time
from pathlib import Path
import datasets
from lmforge.data.cache import cached_dataset

work, me, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
(work / f"ready-{me}").touch()
while len(list(work.glob("ready-*"))) < n:  # start together
    time.sleep(0.01)

def build():
    with open(work / "builds.txt", "a") as f:
        f.write(me + "\\n")
    time.sleep(0.5)  # a slow tokenization: the others arrive while it runs
    return datasets.Dataset.from_dict({"x": list(range(1000))}), {"rows": 1000}

enc = cached_dataset("same-key", build, kind="test")
assert sum(enc.data["x"]) == 499500 and enc.info == {"rows": 1000}
print("hit" if enc.hit else "built")
"""


def _run_together(work, script_text: str, n: int) -> list[str]:
    """Run `script_text` in n processes at once (sharing one LMFORGE_CACHE); their last lines."""
    script = work / "worker.py"
    script.write_text(script_text)
    env = dict(os.environ, LMFORGE_CACHE=str(work / "cache"), HF_HUB_OFFLINE="1")
    procs = [subprocess.Popen([sys.executable, str(script), str(work), str(i), str(n)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-1500:] for _, err in outs]
    return [out.strip().splitlines()[-1] for out, _ in outs]


def test_processes_sharing_a_cache_entry_build_it_once(tmp_path):
    """Before a lock guarded the cache, each process of a 2-process run tokenized, and one could
    delete the entry another was loading (FileNotFoundError in test_ddp, about one run in five)."""
    n = 3
    lines = _run_together(tmp_path, SCRIPT, n)
    assert len((tmp_path / "builds.txt").read_text().split()) == 1  # built once, by one process
    assert sorted(lines) == ["built"] + ["hit"] * (n - 1)


TOKENIZER_SCRIPT = """
import sys, time
from pathlib import Path
from lmforge.config import build_config
from lmforge import tokenizer as T

work, me, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
cfg = build_config({"task": "causal-lm", "data": {"train": str(work / "corpus.txt")},
                    "tokenizer": {"train": {"type": "byte-level-bpe", "vocab_size": 300}}})
(work / f"ready-{me}").touch()
while len(list(work.glob("ready-*"))) < n:
    time.sleep(0.01)
tok = T.trained_for_config(cfg)
print(len(tok), T.STATS["misses"])
"""


def test_processes_of_one_run_train_its_tokenizer_once(tmp_path):
    from test_tokenizer import make_text
    (tmp_path / "corpus.txt").write_text("\n".join(make_text(400, seed=3)) + "\n")
    results = [line.split() for line in _run_together(tmp_path, TOKENIZER_SCRIPT, 2)]
    assert len({vocab for vocab, _ in results}) == 1
    assert sorted(int(misses) for _, misses in results) == [0, 1]  # one trained, the other loaded it


def test_a_cache_build_says_so_and_how_long_it_took(tmp_path, monkeypatch, caplog):
    """A build is a phase the user waits through: one line when it starts, one with its time when it took a
    while; a reuse says nothing."""
    import logging
    import time as _time

    from lmforge import fs
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path))
    monkeypatch.setattr(fs, "CACHE_NOTE_S", 0.05)
    with caplog.at_level(logging.INFO, logger="lmforge"):
        with fs.cache_slot("data", "entry", lambda p: p.exists()) as slot:
            assert not slot.hit
            _time.sleep(0.1)
            slot.partial.write_text("x")
            slot.publish()
        lines = [r.getMessage() for r in caplog.records]
        assert lines[0].startswith("data cache: building an entry") and lines[1].startswith("data cache: built in")
        caplog.clear()
        with fs.cache_slot("data", "entry", lambda p: p.exists()) as slot:
            assert slot.hit
        assert not caplog.records
