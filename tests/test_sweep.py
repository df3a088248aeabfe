"""Hyper-parameter search: trials are run folders; the summary and the best config match them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from conftest import cls_config, toy_sentiment_rows, write_csv


def test_three_trial_sweep_writes_three_runs_and_the_best_config(tiny_bert, tmp_path):
    from lmforge import cli

    train = write_csv(tmp_path / "train.csv", toy_sentiment_rows(64, seed=0))
    test = write_csv(tmp_path / "test.csv", toy_sentiment_rows(16, seed=5))
    cfg = cls_config(train, test, tmp_path / "unused", tiny_bert, report_to="none", eval_strategy="steps", eval_steps=2)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "sweep"
    rc = cli.main(["--quiet", "sweep", str(tmp_path / "c.yaml"), "--param", "train.learning_rate=loguniform:1e-4:1e-2",
                   "--param", "train.per_device_train_batch_size=choice:8,16", "--trials", "3",
                   "--metric", "eval.accuracy", "--direction", "maximize", "--output-dir", str(out),
                   "--train.max_steps", "4"])  # extra overrides apply to every trial
    assert rc == 0

    trials = sorted(p for p in out.iterdir() if p.name.startswith("trial-"))
    assert [p.name for p in trials] == ["trial-000", "trial-001", "trial-002"]
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    for row, run in zip(rows, trials):
        run_cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert run_cfg["train"]["learning_rate"] == pytest.approx(float(row["train.learning_rate"]))
        assert run_cfg["train"]["per_device_train_batch_size"] == int(row["train.per_device_train_batch_size"])
        assert run_cfg["train"]["max_steps"] == 4
        assert 1e-4 <= run_cfg["train"]["learning_rate"] <= 1e-2
        status = json.loads((run / "manifest.json").read_text())["status"]
        assert status == {"complete": "finished", "pruned": "pruned"}[row["state"]]
        if row["state"] == "complete":
            metrics = json.loads((run / "metrics.json").read_text())
            assert float(row["eval.accuracy"]) == pytest.approx(metrics["eval"]["accuracy"])
    assert len({r["train.learning_rate"] for r in rows}) == 3  # the sampler explored

    done = [r for r in rows if r["state"] == "complete"]
    # the best accuracy; a tie goes to the lower eval loss, then the earlier trial
    top = max(float(r["eval.accuracy"]) for r in done)

    def eval_loss(r):
        return json.loads((Path(r["run_dir"]) / "metrics.json").read_text())["eval"]["loss"]
    best = min((r for r in done if float(r["eval.accuracy"]) == top), key=lambda r: (eval_loss(r), int(r["trial"])))
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["best"]["value"] == pytest.approx(float(best["eval.accuracy"]))
    best_cfg = yaml.safe_load((out / "best_config.yaml").read_text())
    assert best_cfg["train"]["learning_rate"] == pytest.approx(float(best["train.learning_rate"]))
    assert best_cfg["output"]["output_dir"] is None  # `lmforge train best_config.yaml` makes a new run
    assert "**best**" in (out / "summary.md").read_text()


def test_param_specs_and_pruning_callback():
    import optuna

    from lmforge.errors import LmforgeError
    from lmforge.tools.sweep import PruneOnEval, parse_metric, parse_param

    p = parse_param("train.per_device_train_batch_size=choice:8,16")
    assert p.choices == [8, 16]
    p = parse_param("train.learning_rate=loguniform:1e-5:1e-3")
    assert (p.low, p.high) == (1e-5, 1e-3)
    for bad, msg in (("train.learning_rate=logunifrm:1e-5:1e-3", "Did you mean 'loguniform'"),
                     ("train.learning_rate=loguniform:1e-3:1e-5", "LOW must be below HIGH"),
                     ("train.warmup_steps=int:1.5:4", "not an integer"),
                     ("train.learning_rate", "has no '='")):
        with pytest.raises(LmforgeError, match=msg):
            parse_param(bad)
    assert parse_metric("eval.loss", None)[2] == "minimize"
    assert parse_metric("eval.accuracy", None)[2] == "maximize"

    class FakeTrial:
        def __init__(self, prune):
            self.prune, self.reports = prune, []

        def report(self, value, step):
            self.reports.append((step, value))

        def should_prune(self):
            return self.prune

    keep = FakeTrial(False)
    cb = PruneOnEval(keep, "accuracy")
    cb({"step": 3, "loss": 0.5, "lr": 1e-3})  # a training line: nothing to report
    cb({"step": 4, "eval_accuracy": 0.75, "eval_loss": 0.4})
    assert keep.reports == [(4, 0.75)]
    with pytest.raises(optuna.TrialPruned):
        PruneOnEval(FakeTrial(True), "accuracy")({"step": 2, "eval_accuracy": 0.5})


def test_sweep_rejects_an_unknown_key_before_training(tmp_path):
    from lmforge.errors import LmforgeError
    from lmforge.tools.sweep import sweep

    with pytest.raises(LmforgeError, match="learning_rat"):
        sweep({"data": {"train": "x.csv"}}, ["train.learning_rat=loguniform:1e-5:1e-3"], trials=1,
              output_dir=str(tmp_path / "s"))
    assert not (tmp_path / "s").exists()


def test_a_sweep_whose_every_trial_fails_is_one_line_exit_2(tiny_bert, tmp_path, monkeypatch, capsys):
    from lmforge import cli
    from lmforge.tools import sweep

    def crash(*a, **k):
        raise RuntimeError("CUDA error: device-side assert triggered")
    monkeypatch.setattr(sweep, "train", crash)
    train = write_csv(tmp_path / "train.csv", toy_sentiment_rows(32, seed=0))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cls_config(train, train, tmp_path / "u", tiny_bert)))
    rc = cli.main(["--quiet", "sweep", str(tmp_path / "c.yaml"), "--param", "train.learning_rate=loguniform:1e-4:1e-2",
                   "--trials", "2", "--output-dir", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert rc == 2 and "all 2 trials of the sweep" in err and "RuntimeError: CUDA error" in err
    assert "Traceback" not in err
