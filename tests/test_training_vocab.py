"""The Trainer's training vocabulary: every transformers schedule (built by get_scheduler, resumed exactly,
reduce_lr_on_plateau on the eval metric), optimizer choices, your own metrics function, push to the Hub."""

from __future__ import annotations

import hashlib
import json
import shutil
import typing
from pathlib import Path

import pytest
import torch
from conftest import toy_sentiment_rows
from test_pinned_losses import _lm_config
from test_resume import assert_same_run, run_config
from transformers import SchedulerType, get_scheduler

from lmforge import api
from lmforge.cli import main
from lmforge.config import SchedulerName, build_config
from lmforge.errors import LmforgeError

SCHEDULE_KWARGS = {"cosine_with_restarts": {"num_cycles": 2}, "polynomial": {"power": 2.0, "lr_end": 1e-5},
                   "cosine_with_min_lr": {"min_lr_rate": 0.1}, "cosine_warmup_with_min_lr": {"min_lr_rate": 0.1},
                   "warmup_stable_decay": {"num_decay_steps": 4, "num_stable_steps": 4}, "inverse_sqrt": {}}


# tiny models run fastest on one thread (conftest.one_thread says why)
pytestmark = pytest.mark.usefixtures("one_thread")


def _logged(run: Path, key: str) -> list:
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    return [r[key] for r in rows if key in r]


def _reference_lrs(name: str, lr: float, steps: int, warmup: int, kwargs: dict) -> list[float]:
    """What transformers' get_scheduler gives over `steps` optimizer steps (the LR each step uses)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=steps,
                          scheduler_specific_kwargs=dict(kwargs))
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_config_accepts_every_transformers_schedule():
    assert set(typing.get_args(SchedulerName)) == {s.value for s in SchedulerType}
    with pytest.raises(LmforgeError, match="cosine"):
        build_config({"train": {"lr_scheduler_type": "cosin"}})


@pytest.mark.parametrize("name", ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                                  "constant_with_warmup", "inverse_sqrt", "cosine_with_min_lr",
                                  "cosine_warmup_with_min_lr", "warmup_stable_decay"])
def test_logged_learning_rates_equal_get_scheduler(name, tiny_bert, tmp_path):
    kwargs = SCHEDULE_KWARGS.get(name, {})
    cfg = run_config(tmp_path, tiny_bert, tmp_path / "run", num_train_epochs=1, gradient_accumulation_steps=1,
                     logging_steps=1, eval_strategy="no", save_strategy="no", warmup_steps=3,
                     lr_scheduler_type=name, lr_scheduler_kwargs=kwargs)
    run = api.train(cfg, progress=False).run_dir
    lrs = _logged(run, "lr")
    assert len(lrs) == 20
    assert lrs == pytest.approx(_reference_lrs(name, 3e-3, 20, 3, kwargs), rel=1e-9, abs=1e-15)


def test_plateau_without_evaluations_is_refused():
    with pytest.raises(LmforgeError, match="reduce_lr_on_plateau steps on evaluations"):
        build_config({"train": {"lr_scheduler_type": "reduce_lr_on_plateau", "eval_strategy": "no"}})


def test_schedule_with_wrong_arguments_is_one_line(tiny_bert, tmp_path):
    cfg = run_config(tmp_path, tiny_bert, tmp_path / "run", lr_scheduler_type="cosine_with_min_lr")
    with pytest.raises(LmforgeError, match="cosine_with_min_lr"):
        api.train(cfg, progress=False)
    assert not (tmp_path / "run").exists()


def test_reduce_lr_on_plateau_steps_on_the_eval_metric(tiny_bert, tmp_path):
    cfg = run_config(tmp_path, tiny_bert, tmp_path / "run", learning_rate=3e-5, num_train_epochs=2,
                     gradient_accumulation_steps=1, logging_steps=1, eval_strategy="steps", eval_steps=2,
                     save_strategy="no", warmup_ratio=0.0, lr_scheduler_type="reduce_lr_on_plateau",
                     lr_scheduler_kwargs={"patience": 0, "factor": 0.5, "threshold": 0.5})
    run = api.train(cfg, progress=False).run_dir
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    lrs = {r["step"]: r["lr"] for r in rows if "lr" in r}
    evals = [(r["step"], r["eval_accuracy"]) for r in rows if "eval_accuracy" in r]
    # replay the metric through torch's own ReduceLROnPlateau (mode max: accuracy is higher-better)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-5)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", patience=0, factor=0.5, threshold=0.5)
    expected, i = {}, 0
    for step in sorted(lrs):
        expected[step] = opt.param_groups[0]["lr"]
        if i < len(evals) and evals[i][0] == step:
            ref.step(evals[i][1])
            i += 1
    assert lrs == pytest.approx(expected)
    assert min(lrs.values()) < 3e-5  # it did reduce


@pytest.fixture(scope="module")
def references(tiny_bert, tmp_path_factory):
    """Finished runs with checkpoints every 5 steps, per schedule / optimizer, to resume copies of."""
    out = {}
    for key, extra in {"plateau": {"lr_scheduler_type": "reduce_lr_on_plateau", "lr_scheduler_kwargs": {"patience": 0},
                                   "learning_rate": 1e-4},
                       "restarts": {"lr_scheduler_type": "cosine_with_restarts",
                                    "lr_scheduler_kwargs": {"num_cycles": 3}},
                       "sgd": {"optim": "sgd", "momentum": 0.9, "learning_rate": 0.05},
                       "adafactor": {"optim": "adafactor", "learning_rate": 1e-2}}.items():
        d = tmp_path_factory.mktemp(f"ref-{key}")
        out[key] = (d, extra, api.train(run_config(d, tiny_bert, d / "ref", save_total_limit=None, **extra),
                                        progress=False).run_dir)
    return out


@pytest.mark.parametrize("key", ["plateau", "restarts", "sgd", "adafactor"])
def test_resumed_mid_schedule_logs_the_same_learning_rates(references, key, tiny_bert, tmp_path):
    d, extra, ref = references[key]
    run = tmp_path / "copy"
    shutil.copytree(ref, run)
    api.train(run_config(d, tiny_bert, run, save_total_limit=None, **extra),
              resume=run / "checkpoints" / "step-10", progress=False)
    assert _logged(run, "lr") == _logged(ref, "lr")
    assert_same_run(ref, run)


@pytest.mark.parametrize("optim,lr,momentum", [("adamw", 3e-3, 0.0), ("sgd", 0.5, 0.9), ("adafactor", 1e-2, 0.0)])
def test_each_optimizer_trains(optim, lr, momentum, tmp_path):
    """A tiny from-config GPT-2 on the toy corpus (plain SGD does not move the tiny BERT classifier in 60 steps)."""
    cfg = _lm_config("causal-lm", tmp_path)
    cfg["train"].update(max_steps=20, optim=optim, learning_rate=lr, momentum=momentum, lr_scheduler_type="constant")
    res = api.train(cfg, progress=False)
    losses = _logged(res.run_dir, "loss")
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 1.0, (optim, losses)
    assert res.metrics["eval"]["loss"] < res.metrics["before"]["loss"] - 1.0


def test_8bit_adamw_without_a_gpu_is_one_line(tiny_bert, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(LmforgeError, match="adamw_8bit needs a CUDA GPU"):
        api.train(run_config(tmp_path, tiny_bert, tmp_path / "run", optim="adamw_8bit"), progress=False)


# ----------------------------------------------------------------------------------- your metrics
METRICS_MODULE = '''
import numpy as np

def f1_weighted(predictions, labels, batch_info):
    from sklearn.metrics import f1_score
    return {"my_f1": f1_score(labels, predictions.argmax(-1), average="weighted"),
            "my_mean_loss": float(np.mean(batch_info["loss"])), "n_seen": len(labels)}

def broken(predictions, labels, batch_info):
    return {"x": 1 / 0}

def token_stats(predictions, labels, batch_info):
    return {"mean_token_nll": float(np.mean(predictions)), "scored_tokens": len(labels)}
'''


@pytest.fixture()
def metrics_module(tmp_path, monkeypatch):
    (tmp_path / "my_metrics.py").write_text(METRICS_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_metrics_function_is_merged_reported_and_picks_the_best(metrics_module, tiny_bert, tmp_path):
    from sklearn.metrics import f1_score
    cfg = run_config(tmp_path, tiny_bert, tmp_path / "run", metric_for_best_model="my_f1")
    cfg["eval"] = {"metrics_function": "my_metrics:f1_weighted"}
    res = api.train(cfg, progress=False)
    m = json.loads((res.run_dir / "metrics.json").read_text())
    for split in ("before", "eval"):
        assert {"my_f1", "my_mean_loss", "n_seen"} <= set(m[split])
        assert m[split]["my_mean_loss"] == pytest.approx(m[split]["loss"], rel=1e-6)
        assert m[split]["n_seen"] == 40
    # the same figure scikit-learn gives for the final model's predictions
    preds = api.predict(res.run_dir, input_file=str(tmp_path / "eval.csv"), progress=False)
    truth = [label for _, label in toy_sentiment_rows(40, seed=9)]
    assert m["eval"]["my_f1"] == pytest.approx(f1_score(truth, [p["label"] for p in preds], average="weighted"))
    evals = [r["eval_my_f1"] for r in map(json.loads, (res.run_dir / "log.jsonl").read_text().splitlines())
             if "eval_my_f1" in r]
    assert m["train"]["best_metric"] == max(evals)  # higher-better: not a loss
    assert "my_f1" in (res.run_dir / "report.html").read_text()
    again = api.evaluate(res.run_dir, str(tmp_path / "eval.csv"), progress=False)  # `lmforge eval` too
    assert again["my_f1"] == pytest.approx(m["eval"]["my_f1"])
    assert "my_metrics:f1_weighted" in (res.run_dir / "README.md").read_text()


def test_metrics_function_for_a_language_model_gets_token_losses(metrics_module, tmp_path):
    from conftest import corpus_text
    (tmp_path / "corpus.txt").write_text(corpus_text())
    cfg = {"task": "causal-lm", "tokenizer": {"train": {"type": "byte-level-bpe", "vocab_size": 300}},
           "model": {"from_config": {"architecture": "gpt2", "n_layer": 1, "hidden_size": 32, "num_attention_heads": 2,
                                     "max_position_embeddings": 64}},
           "data": {"train": str(tmp_path / "corpus.txt"), "block_size": 32},
           "train": {"max_steps": 3, "eval_strategy": "no", "save_strategy": "no", "learning_rate": 3e-3},
           "eval": {"metrics_function": "my_metrics:token_stats"}, "output": {"output_dir": str(tmp_path / "run")}}
    m = api.train(cfg, progress=False).metrics["eval"]
    assert m["mean_token_nll"] == pytest.approx(m["loss"], rel=1e-5) and m["scored_tokens"] == m["n_tokens"]


def test_a_failing_metrics_function_is_one_line_naming_it(metrics_module, tiny_bert, tmp_path, capsys):
    cfg = run_config(tmp_path, tiny_bert, tmp_path / "run")
    cfg["eval"] = {"metrics_function": "my_metrics:nothing"}
    (tmp_path / "c.yaml").write_text(json.dumps(cfg))
    assert main(["train", str(tmp_path / "c.yaml"), "--no-progress"]) == 2
    assert "has no function 'nothing'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # checked before the run folder was made
    cfg["eval"] = {"metrics_function": "my_metrics:broken"}
    (tmp_path / "c.yaml").write_text(json.dumps(cfg))
    assert main(["train", str(tmp_path / "c.yaml"), "--no-progress"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "my_metrics:broken failed: ZeroDivisionError: division by zero" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # it failed at the evaluation before step 1: nothing is left behind


# ----------------------------------------------------------------------------------- push
def _tree_digest(d: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        h.update(str(p.relative_to(d)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_push_offline_or_without_token_is_one_line_and_changes_nothing(tiny_cls_run, tmp_path, capsys, monkeypatch):
    before = _tree_digest(tiny_cls_run)
    assert main(["push", str(tiny_cls_run), "--repo-id", "me/tiny"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "HF_HUB_OFFLINE=1" in err and "hf auth login" in err and "Traceback" not in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no stored token
    assert main(["push", str(tiny_cls_run), "--repo-id", "me/tiny"]) == 2
    assert "not logged in" in capsys.readouterr().err
    assert main(["push", str(tiny_cls_run), "--repo-id", "not a repo"]) == 2
    assert _tree_digest(tiny_cls_run) == before


def test_push_to_hub_in_the_config_fails_before_training(tiny_bert, tmp_path):
    cfg = run_config(tmp_path, tiny_bert, tmp_path / "run")
    cfg["output"].update(push_to_hub=True, hub_model_id="me/tiny")
    with pytest.raises(LmforgeError, match="HF_HUB_OFFLINE"):
        api.train(cfg, progress=False)
    assert not (tmp_path / "run").exists()
