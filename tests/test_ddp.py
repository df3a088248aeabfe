"""Two CPU processes (gloo, launched by `lmforge train --num-processes 2`) follow the one-process loss curve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import cls_config, toy_sentiment_rows, write_csv


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_two_processes_match_one_process_with_the_same_global_batch(tiny_bert_nodrop, tmp_path):
    from lmforge import api
    from lmforge.errors import LmforgeError

    train = write_csv(tmp_path / "train.csv", toy_sentiment_rows(96, seed=0))
    test = write_csv(tmp_path / "test.csv", toy_sentiment_rows(18, seed=5))
    # group_by_length off: batch k of size 16 is then exactly batches 2k and 2k+1 of size 8, one per process
    common = dict(learning_rate=3e-3, group_by_length=False, eval_strategy="no", save_strategy="epoch",
                  per_device_eval_batch_size=4, report_to="none", load_best_model_at_end=False)
    ddp_cfg = cls_config(train, test, "unused", tiny_bert_nodrop, per_device_train_batch_size=8, **common)
    del ddp_cfg["output"]  # default run name (a timestamp): every process must agree on it
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(ddp_cfg))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-m", "lmforge.cli", "--quiet", "train", "ddp.yaml", "--num-processes", "2",
                           "--no-progress"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]

    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs  # one run folder, written by the main process only
    ddp_run = runs[0]
    manifest = json.loads((ddp_run / "manifest.json").read_text())
    assert manifest["num_processes"] == 2 and manifest["effective_batch_size"] == 16
    state = json.loads((ddp_run / "checkpoints" / "step-6" / "trainer_state.json").read_text())
    assert state["world_size"] == 2

    single = api.train(cls_config(train, test, tmp_path / "single", tiny_bert_nodrop, per_device_train_batch_size=16,
                                  **common), progress=False)
    ddp_log, one_log = _log(ddp_run), _log(single.run_dir)
    assert [r["step"] for r in ddp_log] == [r["step"] for r in one_log] == [1, 2, 3, 4, 5, 6]  # no line twice
    ddp_loss, one_loss = [r["loss"] for r in ddp_log], [r["loss"] for r in one_log]
    assert ddp_loss == pytest.approx(one_loss, rel=1e-4, abs=1e-5)
    assert max(one_loss) - min(one_loss) > 0.01  # the curve moves, so matching it means something
    assert [r["grad_norm"] for r in ddp_log] == pytest.approx([r["grad_norm"] for r in one_log], rel=1e-3)

    # evaluation is split across the processes (5 batches of 4: 3 + 2) and gathered: every example once
    ddp_metrics = json.loads((ddp_run / "metrics.json").read_text())
    assert ddp_metrics["eval"]["n_examples"] == 18
    assert ddp_metrics["eval"]["loss"] == pytest.approx(single.metrics["eval"]["loss"], rel=1e-4)

    # a checkpoint of 2 processes does not resume in 1
    with pytest.raises(LmforgeError, match="same number of processes"):
        last = sorted((ddp_run / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
        api.train(ddp_cfg | {"output": {"output_dir": str(ddp_run)}}, resume=last, progress=False)
