"""`lmforge doctor`: each planted data problem is reported; a good config gets exit 0 with its facts."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import toy_sentiment_rows, write_csv
from rich.console import Console

from lmforge.cli import main
from lmforge.tools.doctor import run_doctor
from lmforge.train import memory

# tiny models run fastest on one thread (conftest.one_thread says why)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """Default output folders (runs/...) resolve under tmp_path, not in a checkout where
    `make demo` may already have left a finished run."""
    monkeypatch.chdir(tmp_path)


def doctor(*args, probe=False, config=None):
    buf = io.StringIO()
    report = run_doctor(config, list(args), probe=probe, console=Console(file=buf, width=250, soft_wrap=True))
    return report, " ".join(buf.getvalue().split())


def planted(d: Path) -> tuple[Path, Path]:
    """Train: empty texts (rows 3, 7), a NaN label (row 10), duplicates, a text with two labels, 15:1 imbalance.
    Eval: a label never seen in training, and a text copied from train."""
    rows = [(t, "pos") for t, _ in toy_sentiment_rows(60, seed=2)] + [(t, "neg") for t, _ in toy_sentiment_rows(4, seed=4)]
    rows[2] = ("  ", "pos")
    rows[6] = ("", "pos")
    rows[9] = (rows[9][0], "nan")
    rows += [rows[20], rows[21], rows[21]]  # 3 duplicates
    rows.append((rows[30][0], "neg"))  # the same text as row 31, another label
    train = write_csv(d / "planted.csv", rows)
    ev = write_csv(d / "planted-eval.csv", [(rows[40][0], "pos"), ("good great food", "neutral"),
                                             ("awful stale", "neg")])
    return train, ev


def test_each_planted_problem_is_reported(tmp_path, tiny_bert):
    train, ev = planted(tmp_path)
    report, out = doctor("--model.name", str(tiny_bert), "--data.train", str(train), "--data.eval", str(ev),
                         "--data.test", "null", "--output.output_dir", str(tmp_path / "run"))
    assert not report.ok
    problems = " | ".join(report.problems)
    assert "2 rows with empty text (rows 3, 7)" in problems
    assert "1 rows with a missing or NaN label (rows 10)" in problems
    assert "label(s) 'neutral' never appear in the training data" in problems
    assert len(report.problems) == 3, report.problems
    warnings = " | ".join(report.warnings)
    assert "4 duplicate texts" in warnings  # 3 copied rows + the one relabelled
    assert "1 texts appear with different labels" in warnings
    assert "imbalanced ('pos' 62 vs 'neg' 5)" in warnings  # 60 - 1 NaN + 3 copies; 4 + 1 relabelled
    assert "1 texts also appear in the training data" in warnings
    assert "label balance (train): pos 62 (93%), neg 5 (7%)" in out
    assert "skipped: fix the problems above first" in out
    assert not (tmp_path / "run").exists()  # doctor writes no run folder


def test_cli_exit_codes(tmp_path, tiny_bert, capsys):
    train, ev = planted(tmp_path)
    assert main(["doctor", "--model.name", str(tiny_bert), "--data.train", str(train), "--data.eval", str(ev),
                 "--data.test", "null", "--no-probe"]) == 2
    out = capsys.readouterr().out
    assert "3 problem(s)" in out and "Traceback" not in out
    assert main(["doctor", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().out


def test_good_config_reports_lengths_example_memory_and_time(tmp_path, tiny_bert):
    from transformers import AutoTokenizer

    from lmforge.data.batching import epoch_batches
    rows = toy_sentiment_rows(80, seed=6)
    train = write_csv(tmp_path / "train.csv", rows)
    ev = write_csv(tmp_path / "eval.csv", toy_sentiment_rows(20, seed=8))
    report, out = doctor("--model.name", str(tiny_bert), "--data.train", str(train), "--data.eval", str(ev),
                         "--data.test", "null", "--data.max_length", "8", "--train.per_device_train_batch_size", "8",
                         "--train.seed", "5", "--train.num_train_epochs", "2", probe=True)
    assert report.ok, report.problems
    assert "ready to train" in out
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    lengths = [len(tok(t)["input_ids"]) for t, _ in rows]
    share = sum(n > 8 for n in lengths) / len(lengths)
    assert 0 < share < 1
    assert report.facts["truncated_share"] == pytest.approx(share)
    assert f"truncated at the limit: {100 * share:.1f}% of the training examples" in out
    assert report.facts["lengths"]["max"] == 8
    # the first example is the first row of the first batch training draws, with its label
    first = epoch_batches([min(n, 8) for n in lengths], 8, 5, 0)[0][0]
    assert f"first training example (row {first}, " in out
    words = rows[first][0].split()
    assert " ".join(tok.tokenize(" ".join(words))[:3]) in out.split("input: [CLS] ")[1]
    assert f"label: {rows[first][1]}" in out
    # memory: exact for weights, gradients and AdamW state of the 2-layer model
    from transformers import AutoModelForSequenceClassification
    n = sum(p.numel() for p in AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).parameters())
    mem = report.facts["memory"]
    assert mem["gradients_mb"] == pytest.approx(4 * n / 2**20, abs=0.05)
    assert mem["optimizer_mb"] == pytest.approx(8 * n / 2**20, abs=0.05)
    assert mem["fits"] is True and mem["seq_len"] == 8
    assert report.facts["total_steps"] == 20  # 80 rows / 8 = 10 steps x 2 epochs
    assert 0 < report.facts["seconds_per_step"] < 30
    assert "s per step (median)" in out
    # evaluation is timed too: 20 eval rows before training, after each of 2 epochs and at the end = 80 items
    from lmforge.tools.doctor.prepared import eval_items_planned
    from lmforge.config import build_config
    tc = build_config({"train": {"eval_strategy": "epoch"}}).train
    assert eval_items_planned(tc, 20, 10, 20, 0) == 80
    assert "for the 80 items the run evaluates" in out and "whole run: about" in out
    assert report.facts["run_seconds_estimate"] > report.facts["seconds_per_step"] * 20
    tc = build_config({"train": {"eval_strategy": "steps", "eval_steps": 5, "before_eval_max_samples": 8}}).train
    assert eval_items_planned(tc, 20, 10, 20, 30) == 8 + 4 * 20 + 20 + 8 + 30  # capped before, its sample after


def test_previous_crash_and_cut_off_checkpoint_are_reported(tmp_path, tiny_bert):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "run"
    (run / "checkpoints" / "step-5").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"status": "running", "pid": dead.pid, "started": "earlier"}))
    (run / "log.jsonl").write_text(json.dumps({"step": 4, "loss": 1.0, "peak_mem_mb": 900.0}) + "\n")
    train = write_csv(tmp_path / "t.csv", toy_sentiment_rows(20))
    report, out = doctor("--model.name", str(tiny_bert), "--data.train", str(train), "--data.test", "null",
                         "--output.output_dir", str(run))
    warnings = " | ".join(report.warnings)
    assert f"pid {dead.pid}" in warnings and "ended without a clean exit" in warnings
    assert "last logged step 4" in warnings and "peak memory 900 MB" in warnings
    assert "--resume" in warnings and "per_device_train_batch_size" in warnings
    assert "step-5 will be skipped" in warnings and "COMPLETE" in warnings


def test_finished_output_dir_is_a_problem(tmp_path, tiny_bert):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"status": "finished"}))
    train = write_csv(tmp_path / "t.csv", toy_sentiment_rows(20))
    report, _ = doctor("--model.name", str(tiny_bert), "--data.train", str(train), "--data.test", "null",
                       "--output.output_dir", str(run))
    assert any("already holds a finished run" in p and "--overwrite" in p for p in report.problems)


def test_masked_lm_example_shows_masked_positions(tmp_path, tiny_bert):
    from lmforge.tasks import TASKS
    if "masked-lm" not in TASKS:
        pytest.skip("no masked-lm task in this checkout")
    from conftest import corpus_text
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(corpus_text())
    report, out = doctor("--task", "masked-lm", "--model.name", str(tiny_bert), "--data.train", str(corpus),
                         "--data.test", "null", "--train.per_device_train_batch_size", "4")
    assert report.ok, report.problems
    assert "positions predicted, shown as [input→label]" in out and "[[MASK]→" in out


def test_memory_advice_is_concrete():
    mb = 2 ** 20
    est = memory.MemoryEstimate(weights=100 * mb, gradients=100 * mb, optimizer=200 * mb, activations=32 * 50 * mb,
                                evaluation=10 * mb, batch_size=32, seq_len=512, device="cpu",
                                available=900 * mb, already_used=100 * mb, per_example_activation=50 * mb,
                                per_token_activation=50 * mb / 512)
    assert est.total == pytest.approx((100 + 200 + 100 + 1600) * mb)
    assert est.fits is False
    tips = memory.advise(est, accum=1, length_key="data.max_length")
    # room = 1000 available - 400 fixed = 600 MB -> 600 / 50 = 12 examples per micro-batch
    assert tips[0] == ("train.per_device_train_batch_size 12 with train.gradient_accumulation_steps 3 "
                       "(about the same effective batch)")
    assert tips[1].startswith("data.max_length 192 ")  # 600 MB / (32 x 50 MB / 512 tokens)
    assert "gradient_checkpointing" in tips[2]


def test_memory_estimate_grows_with_batch_and_length(tiny_bert):
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    est = lambda b, s, ckpt=False: memory.estimate(model, [s], b, 8, 0, "no", ckpt, "cpu").activations
    assert est(16, 64) == pytest.approx(2 * est(8, 64))
    assert est(8, 128) > 2 * est(8, 64)  # attention scores grow with the square of the length
    assert est(8, 128, ckpt=True) < est(8, 128) / 1.5
