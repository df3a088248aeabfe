"""Experiment trackers: TensorBoard events and the MLflow store hold what log.jsonl holds."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import pytest

from conftest import cls_config, toy_sentiment_rows, write_csv

HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None


@pytest.fixture(scope="module")
def tracked_run(tiny_bert, tmp_path_factory):
    """One tiny classification run logging to TensorBoard (and MLflow when installed), in its own cwd."""
    from lmforge import api

    tmp = tmp_path_factory.mktemp("tracked")
    train = write_csv(tmp / "train.csv", toy_sentiment_rows(96, seed=0))
    test = write_csv(tmp / "test.csv", toy_sentiment_rows(24, seed=5))
    cfg = cls_config(train, test, tmp / "run", tiny_bert, per_device_train_batch_size=16, eval_strategy="steps",
                     eval_steps=3, report_to=["tensorboard"] + (["mlflow"] if HAS_MLFLOW else []))
    old_cwd, old_uri = os.getcwd(), os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(tmp)
    try:
        result = api.train(cfg, progress=False)
    finally:
        os.chdir(old_cwd)
        if old_uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri
    log = [json.loads(line) for line in (result.run_dir / "log.jsonl").read_text().splitlines()]
    return tmp, result, log


def test_tensorboard_events_hold_the_logged_scalars_and_the_config(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    tmp, result, log = tracked_run
    tb = result.run_dir / "tb"
    assert tb.is_dir() and any(p.name.startswith("events.out.tfevents") for p in tb.iterdir())
    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/mfu", "train/peak_mem_mb",
                "eval/loss", "eval/accuracy", "final_eval/accuracy"):
        assert tag in tags, (tag, sorted(tags))

    train_lines = [r for r in log if "loss" in r and "lr" in r]
    assert len(train_lines) == 6  # 96 rows / 16 per batch, logging every step
    for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
        events = acc.Scalars(f"train/{key}")
        assert [e.step for e in events] == [r["step"] for r in train_lines]
        assert [e.value for e in events] == pytest.approx([r[key] for r in train_lines], rel=1e-6)

    evals = acc.Scalars("eval/accuracy")  # step 0 = before training, then every 3 steps
    assert [e.step for e in evals] == [0, 3, 6]
    assert evals[0].value == pytest.approx(result.metrics["before"]["accuracy"])
    logged = [r["eval_accuracy"] for r in log if "eval_accuracy" in r]
    assert [e.value for e in evals[1:]] == pytest.approx(logged)
    assert acc.Scalars("final_eval/accuracy")[-1].value == pytest.approx(result.metrics["eval"]["accuracy"])

    # the resolved config as hyper-parameters (the HParams plugin's session start)
    meta = acc.SummaryMetadata("_hparams_/session_start_info")
    hp = plugin_data_pb2.HParamsPluginData.FromString(meta.plugin_data.content).session_start_info.hparams
    assert hp["train.learning_rate"].number_value == pytest.approx(3e-3)
    assert hp["train.per_device_train_batch_size"].number_value == 16
    assert hp["task"].string_value == "classification"


@pytest.mark.skipif(not HAS_MLFLOW, reason="mlflow is not installed (pip install mlflow)")
def test_mlflow_local_store_has_the_run_params_and_metrics(tracked_run):
    from mlflow.tracking import MlflowClient

    tmp, result, log = tracked_run
    store = tmp / "mlruns"
    assert store.is_dir()
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    exp = client.get_experiment_by_name("lmforge")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == result.run_dir.name and run.info.status == "FINISHED"
    assert float(run.data.params["train.learning_rate"]) == pytest.approx(3e-3)
    assert run.data.params["model.name"] == result.config.model.name
    history = client.get_metric_history(run.info.run_id, "train/loss")
    train_lines = [r for r in log if "loss" in r and "lr" in r]
    assert sorted((m.step, m.value) for m in history) == \
        [(r["step"], pytest.approx(r["loss"], rel=1e-9)) for r in train_lines]
    assert run.data.metrics["final_eval/accuracy"] == pytest.approx(result.metrics["eval"]["accuracy"])
    assert json.loads((result.run_dir / "trackers.json").read_text())["mlflow"] == run.info.run_id


def test_missing_tracker_package_is_one_line_with_the_pip_command(tmp_path, monkeypatch, capsys):
    from lmforge import cli
    from lmforge.train import trackers

    real = importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  report_to: [tensorboard, wandb]\ndata:\n  train: nowhere.csv\n"
                   f"output:\n  output_dir: {tmp_path / 'run'}\n")
    assert cli.main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "wandb" in err[0] and "pip install wandb" in err[0]
    assert not (tmp_path / "run").exists()


def test_report_to_none_writes_no_events():
    from lmforge.config import build_config
    assert build_config({"train": {"report_to": "none"}}).train.report_to == []
    assert build_config({}).train.report_to == ["tensorboard"]
    with pytest.raises(Exception, match="Did you mean 'mlflow'"):
        build_config({"train": {"report_to": ["mlfow"]}})


def test_wandb_is_offline_unless_logged_in_and_gets_the_scalars(tmp_path, monkeypatch):
    """A stand-in wandb module records what lmforge sends it."""
    from lmforge.train import trackers

    calls = {"log": [], "finish": []}

    class Run:
        id = "abc123"

        def log(self, values, step):
            calls["log"].append((step, dict(values)))

        def finish(self, exit_code):
            calls["finish"].append(exit_code)

    def init(**kw):
        calls["init"] = kw
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    real = importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "wandb" else real(name, *a))
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: not logged in
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    t = trackers.open_trackers(["wandb"], run_dir, {"train": {"learning_rate": 1e-4}, "task": "classification"})
    assert calls["init"]["mode"] == "offline" and calls["init"]["config"]["train"]["learning_rate"] == 1e-4
    t({"step": 2, "epoch": 0.5, "loss": 0.75, "lr": 1e-4, "mfu": None})
    t({"step": 2, "eval_accuracy": 0.5, "eval_loss": 0.6})
    t.close(ok=True)
    assert calls["log"] == [(2, {"train/epoch": 0.5, "train/loss": 0.75, "train/lr": 1e-4}),
                            (2, {"eval/accuracy": 0.5, "eval/loss": 0.6})]
    assert calls["finish"] == [0]
    assert json.loads((run_dir / "trackers.json").read_text()) == {"wandb": "abc123"}

    monkeypatch.setenv("WANDB_API_KEY", "x")
    trackers.open_trackers(["wandb"], run_dir, {})
    assert calls["init"]["mode"] == "online"


@pytest.mark.skipif(not HAS_MLFLOW, reason="mlflow is not installed (pip install mlflow)")
def test_a_resumed_run_continues_the_same_mlflow_run(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from lmforge.train.trackers import open_trackers

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = {"task": "classification", "train": {"learning_rate": 1e-3}}
    first = open_trackers(["mlflow"], run_dir, cfg)
    first({"step": 1, "loss": 0.9, "lr": 1e-3})
    first.close(ok=False)  # the crash
    second = open_trackers(["mlflow"], run_dir, cfg, resume_step=1)
    second({"step": 2, "loss": 0.7, "lr": 1e-3})
    second.close(ok=True)
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    runs = client.search_runs([client.get_experiment_by_name("lmforge").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = client.get_metric_history(runs[0].info.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.9), (2, 0.7)]
