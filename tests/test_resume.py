"""Exact resume: a run killed at any step and resumed writes the same log and the same weights
as a run that was never interrupted (CPU, bit for bit); Ctrl-C / SIGTERM save and stop; NaN policy."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import toy_sentiment_rows, write_csv
from safetensors.torch import load_file

from lmforge import api
from lmforge.errors import LmforgeError

TIMING = ("tokens_per_s", "mfu", "peak_mem_mb", "generation_s")


# tiny models run fastest on one thread (conftest.one_thread says why)
pytestmark = pytest.mark.usefixtures("one_thread")


def run_config(d: Path, model: Path, out: Path, **train) -> dict:
    """Dropout on, accumulation 2, log / eval / save intervals that do not line up (3 / 4 / 5)."""
    tr = {"num_train_epochs": 3, "learning_rate": 3e-3, "per_device_train_batch_size": 8,
          "gradient_accumulation_steps": 2, "seed": 7, "logging_steps": 3, "eval_strategy": "steps",
          "eval_steps": 4, "save_strategy": "steps", "save_steps": 5, "save_total_limit": 2, "warmup_ratio": 0.1}
    tr.update(train)
    train_csv = d / "train.csv" if (d / "train.csv").exists() else write_csv(d / "train.csv", toy_sentiment_rows(160))
    eval_csv = d / "eval.csv" if (d / "eval.csv").exists() else write_csv(d / "eval.csv", toy_sentiment_rows(40, seed=9))
    return {"task": "classification", "model": {"name": str(model)},
            "data": {"train": str(train_csv), "eval": str(eval_csv), "test": None},
            "train": tr, "output": {"output_dir": str(out)}}


def log_without_timing(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def metrics_without_timing(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    for k in ("runtime_s", "eval_s", "tokens_per_s", "mfu", "peak_mem_mb"):
        m.get("train", {}).pop(k, None)
    return m


def assert_same_run(ref: Path, other: Path) -> None:
    a, b = log_without_timing(ref), log_without_timing(other)
    assert len(a) == len(b) and a == b, next(((x, y) for x, y in zip(a, b) if x != y), (len(a), len(b)))
    wa = load_file(str(ref / "model" / "model.safetensors"))
    wb = load_file(str(other / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert metrics_without_timing(ref) == metrics_without_timing(other)


# ----------------------------------------------------------------------------------- real processes

def crashed_then_resumed(cfg, tmp_path, monkeypatch, crash_step: int, before_resume=None):
    """Train cfg(ref) uninterrupted, then cfg(run) with a crash (KeyboardInterrupt) at step `crash_step` and a
    --resume (`before_resume(run folder)` runs in between); returns (ref run folder, resumed run folder) for
    assert_same_run."""
    from lmforge.train import loop
    ref = api.train(cfg(tmp_path / "ref"), progress=False).run_dir
    real = loop.Trainer._collate

    def crash(self, indices, epoch, batch_index):
        if self.step == crash_step:
            raise KeyboardInterrupt("simulated crash")
        return real(self, indices, epoch, batch_index)
    monkeypatch.setattr(loop.Trainer, "_collate", crash)
    with pytest.raises(KeyboardInterrupt):
        api.train(cfg(tmp_path / "run"), progress=False)
    monkeypatch.setattr(loop.Trainer, "_collate", real)
    if before_resume is not None:
        before_resume(tmp_path / "run")
    api.train(cfg(tmp_path / "run"), resume=True, progress=False)
    return ref, tmp_path / "run"

def _cli(cfg_path: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "lmforge.cli", "train", str(cfg_path), "--no-progress", *extra]


def _last_step(run: Path) -> int:
    try:
        lines = (run / "log.jsonl").read_text().splitlines()
    except OSError:
        return 0
    steps = [json.loads(x).get("step", 0) for x in lines if x.strip().endswith("}")]
    return max(steps, default=0)


def _run_until(cmd: list[str], run: Path, target: int, sig: int, env: dict) -> subprocess.CompletedProcess:
    """Start training; once log.jsonl reaches `target` steps, send `sig`. Returns the finished process."""
    target = max(target, _last_step(run) + 2)  # a resumed run first truncates what the killed one logged
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 240
    while p.poll() is None and _last_step(run) < target and time.time() < deadline:
        time.sleep(0.01)
    assert p.poll() is None, f"the run ended before step {target}:\n{p.stderr.read()[-2000:]}"
    p.send_signal(sig)
    out, err = p.communicate(timeout=240)
    return subprocess.CompletedProcess(cmd, p.returncode, out, " ".join(err.split()))  # undo rich's wrapping


def test_killed_runs_resume_bit_identical(tmp_path, tiny_bert):
    """SIGKILL, SIGTERM, SIGKILL at steps drawn from three seeds; each time `--resume`; the log,
    metrics and final weights equal those of the uninterrupted run."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    ref_cfg, cfg = tmp_path / "ref.yaml", tmp_path / "run.yaml"
    ref_cfg.write_text(yaml.safe_dump(run_config(tmp_path, tiny_bert, tmp_path / "ref")))
    cfg.write_text(yaml.safe_dump(run_config(tmp_path, tiny_bert, tmp_path / "run")))
    ref = subprocess.run(_cli(ref_cfg), capture_output=True, text=True, env=env, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    total = json.loads((tmp_path / "ref" / "metrics.json").read_text())["train"]["steps"]
    assert total == 30
    # kill points from three seeds, one per third of the run (the first can fall before the first checkpoint)
    points = [random.Random(seed).randint(lo, hi) for seed, (lo, hi) in zip((11, 22, 33), ((2, 8), (10, 16), (18, 23)))]
    run = tmp_path / "run"
    p = _run_until(_cli(cfg), run, points[0], signal.SIGKILL, env)
    assert p.returncode == -signal.SIGKILL
    assert json.loads((run / "manifest.json").read_text())["status"] == "running"  # what a crash leaves

    p = _run_until(_cli(cfg, "--resume"), run, points[1], signal.SIGTERM, env)
    assert "ended without a clean exit" in p.stderr, p.stderr[-2000:]
    assert p.returncode == 130, p.stderr[-2000:]
    assert "checkpoint saved to" in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
    man = json.loads((run / "manifest.json").read_text())
    assert man["status"] == "interrupted"
    stopped_at = json.loads(sorted((run / "checkpoints").glob("step-*"),
                                   key=lambda x: int(x.name[5:]))[-1].joinpath("trainer_state.json").read_text())["step"]
    assert stopped_at >= points[1]  # SIGTERM saved a checkpoint where it stopped, not at a save_steps multiple

    p = _run_until(_cli(cfg, "--resume"), run, points[2], signal.SIGKILL, env)
    assert p.returncode == -signal.SIGKILL

    p = subprocess.run(_cli(cfg, "--resume"), capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "ended without a clean exit" in " ".join(p.stderr.split())
    assert_same_run(tmp_path / "ref", run)


# ----------------------------------------------------------------------------------- in process
@pytest.fixture(scope="module")
def reference(tiny_bert, tmp_path_factory):
    d = tmp_path_factory.mktemp("resume-ref")
    res = api.train(run_config(d, tiny_bert, d / "ref", save_total_limit=None), progress=False)
    return d, res.run_dir


def test_resume_from_an_older_checkpoint_replays_exactly(reference, tiny_bert, tmp_path):
    """--resume PATH to step 10 of a finished run: later checkpoints and a later best model are
    discarded, and the replay ends with the same log, metrics and weights."""
    d, ref = reference
    run = tmp_path / "copy"
    shutil.copytree(ref, run)
    assert (run / "checkpoints" / "step-25").exists()
    best_before = int((run / "checkpoints" / "best" / "best_step.txt").read_text())
    res = api.train(run_config(d, tiny_bert, run, save_total_limit=None),
                    resume=run / "checkpoints" / "step-10", progress=False)
    assert res.metrics["train"]["steps"] == 30
    assert int((run / "checkpoints" / "best" / "best_step.txt").read_text()) == best_before
    assert_same_run(ref, run)


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json"])
def test_a_checkpoint_corrupted_in_place_is_skipped_by_its_checksum(reference, tiny_bert, tmp_path, caplog, name):
    """One file of the newest checkpoint changed in place (same size, so the size check cannot see it): --resume
    says so, falls back to the checkpoint before, and the replay is bit-identical to the uninterrupted run."""
    d, ref = reference
    run = tmp_path / "copy"
    shutil.copytree(ref, run)
    target = run / "checkpoints" / "step-30" / name
    data = bytearray(target.read_bytes())
    at = len(data) // 2
    data[at] = (data[at] + 1) % 256  # one byte, same size
    target.write_bytes(bytes(data))
    man = json.loads((run / "manifest.json").read_text())  # a crashed run: unfinished
    (run / "manifest.json").write_text(json.dumps({**man, "status": "interrupted"}))
    (run / "model").rename(run / "model-old")
    with caplog.at_level("INFO", logger="lmforge"):
        api.train(run_config(d, tiny_bert, run, save_total_limit=None), resume=True, progress=False)
    assert "step-30" in caplog.text and f"{name} does not match the checksum" in caplog.text
    assert "resuming from" in caplog.text and "step-25" in caplog.text
    assert_same_run(ref, run)


def test_resume_cleans_up_a_killed_final_model_write(reference, tiny_bert, tmp_path, caplog):
    d, ref = reference
    run = tmp_path / "copy"
    shutil.copytree(ref, run)
    (run / "model").rename(run / ".tmp-model-999999")  # the final write, killed before its rename
    man = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**man, "status": "interrupted"}))
    with caplog.at_level("INFO", logger="lmforge"):
        api.train(run_config(d, tiny_bert, run, save_total_limit=None), resume=True, progress=False)
    assert not list(run.glob(".tmp-*")) and "removed" in caplog.text
    assert_same_run(ref, run)


def test_a_torn_last_log_line_is_dropped_and_other_bad_lines_are_named(tmp_path):
    from lmforge.errors import LmforgeError
    from lmforge.fs import JsonLog
    p = tmp_path / "log.jsonl"
    p.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert [r["step"] for r in JsonLog(p).read()] == [1, 2]
    p.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(LmforgeError, match="log.jsonl line 2 is not valid JSON"):
        JsonLog(p).read()


def test_cut_off_checkpoint_is_skipped(reference, tiny_bert, tmp_path, caplog):
    """The newest checkpoint lost its COMPLETE marker (cut off): --resume warns and uses the one before."""
    d, ref = reference
    run = tmp_path / "copy"
    shutil.copytree(ref, run)
    for later in ("step-20", "step-25", "step-30"):
        shutil.rmtree(run / "checkpoints" / later, ignore_errors=True)
    (run / "checkpoints" / "step-15" / "COMPLETE").unlink()
    (run / "model").rename(run / "model-old")
    man = json.loads((run / "manifest.json").read_text())  # what a crash leaves: an unfinished run
    (run / "manifest.json").write_text(json.dumps({**man, "status": "interrupted"}))
    with caplog.at_level("INFO", logger="lmforge"):
        api.train(run_config(d, tiny_bert, run, save_total_limit=None), resume=True, progress=False)
    text = caplog.text
    assert "skipping checkpoint" in text and "step-15" in text and "COMPLETE" in text
    assert "resuming from" in text and "step-10" in text
    assert_same_run(ref, run)


def _nan_at(monkeypatch, calls: set[int]):
    """Make the classification loss NaN on the given (1-based) training loss calls."""
    from lmforge.tasks import classification
    real = classification.loss_fn
    n = {"calls": 0}

    def loss(model, batch):
        out = real(model, batch)
        if model.training:
            n["calls"] += 1
            if n["calls"] in calls:
                return out * float("nan")
        return out
    monkeypatch.setattr(classification, "loss_fn", loss)


def test_nan_stop_names_step_and_keeps_last_checkpoint(tiny_bert, tmp_path, monkeypatch, capsys):
    from lmforge.cli import main
    _nan_at(monkeypatch, {13, 14})  # accumulation 2: calls 13-14 = step 7
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(run_config(tmp_path, tiny_bert, tmp_path / "run")))
    code = main(["train", str(cfg), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    line = [x for x in err.splitlines() if x.startswith("error:")][0]
    assert "NaN at step 7" in line and "learning_rate" in line and "mixed_precision" in line
    assert "checkpoints/step-5" in line and "nan_policy: skip" in line
    ck = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ck.iterdir() if p.name.startswith("step-")) == ["step-5"]
    from lmforge.train.checkpoint import is_complete, load_weights
    assert is_complete(ck / "step-5")
    assert all(torch.isfinite(t).all() for t in load_weights(ck / "step-5").values())
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"] == "failed"
    # as the hint says: lower the learning rate and resume; the checkpoint's optimizer must not keep the old one
    monkeypatch.undo()
    assert main(["train", str(cfg), "--no-progress", "--resume", "--train.learning_rate", "1e-3"]) == 0
    rec = [r for r in log_without_timing(tmp_path / "run") if r.get("step") == 6 and "lr" in r][0]
    assert rec["lr"] == pytest.approx(1e-3 * 25 / 27)  # linear decay after 3 warmup steps of 30, at step index 5


def test_nan_skip_skips_batches_and_caps_a_streak(tiny_bert, tmp_path, monkeypatch):
    _nan_at(monkeypatch, {5, 6, 7, 8})  # two NaN steps in a row (steps 3 and 4 of 30)
    res = api.train(run_config(tmp_path, tiny_bert, tmp_path / "skip", nan_policy="skip", save_strategy="no"),
                    progress=False)
    logged = [json.loads(x) for x in (res.run_dir / "log.jsonl").read_text().splitlines()]
    skipped = [r for r in logged if r.get("nonfinite_skipped")]
    assert [r["step"] for r in skipped] == [3, 3]  # both would have been step 3
    assert res.metrics["train"]["steps"] == 30  # still 30 updates: two more batches were drawn
    w = load_file(str(res.run_dir / "model" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in w.values())

    _nan_at(monkeypatch, set(range(5, 400)))  # every step from step 3 on
    with pytest.raises(LmforgeError) as e:
        api.train(run_config(tmp_path, tiny_bert, tmp_path / "cap", nan_policy="skip", max_consecutive_nan_skips=3,
                             save_strategy="no"), progress=False)
    assert "4 batches in a row" in e.value.message and "allows 3" in e.value.message


def test_first_signal_asks_to_stop_second_stops_at_once():
    from lmforge.train.signals import StopRequest
    # a shell starts background jobs with SIGINT ignored, which StopRequest respects: Ctrl-C as
    # in a terminal here, whatever started the tests
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        before = signal.getsignal(signal.SIGINT)
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            assert stop.signal == "Ctrl-C (SIGINT)"
            with pytest.raises(KeyboardInterrupt, match="stopped at once"):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.5)
        assert signal.getsignal(signal.SIGINT) is before
    finally:
        signal.signal(signal.SIGINT, outer)


def test_an_ignored_sigint_stays_ignored():
    """Started with SIGINT ignored (nohup, a background job): training does not take it over."""
    from lmforge.train.signals import StopRequest
    outer = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopRequest() as stop:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            assert stop.signal is None
    finally:
        signal.signal(signal.SIGINT, outer)


# ----------------------------------------------------------------------------------- language-model tasks
def _lm_model(task: str, tiny_bert: Path, d: Path) -> Path:
    if task == "masked-lm":
        return tiny_bert
    test_causal_lm = pytest.importorskip("test_causal_lm")
    out = test_causal_lm.make_tiny(d / "gpt2", "gpt2")
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)  # dropout draws from the RNG being restored
    (out / "config.json").write_text(json.dumps(cfg))
    return out


@pytest.mark.parametrize("task", ["masked-lm", "causal-lm"])
def test_language_model_tasks_resume_exactly(task, tiny_bert, tmp_path, monkeypatch):
    """A crash two steps after a checkpoint: masks (masked-lm), packing and generated samples
    (causal-lm) and dropout replay exactly."""
    from conftest import corpus_text

    from lmforge.tasks import TASKS
    if task not in TASKS:
        pytest.skip(f"no {task} task in this checkout")
    model = _lm_model(task, tiny_bert, tmp_path)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(corpus_text())

    def cfg(out):
        return {"task": task, "model": {"name": str(model)}, "data": {"train": str(corpus), "test": None},
                "train": {"max_steps": 12, "learning_rate": 2e-3, "per_device_train_batch_size": 4, "seed": 5,
                          "gradient_accumulation_steps": 2, "logging_steps": 3, "eval_strategy": "steps",
                          "eval_steps": 4, "save_strategy": "steps", "save_steps": 5},
                "output": {"output_dir": str(out)}}
    def logged_past_the_checkpoint(run):
        assert _last_step(run) == 6  # logged past the checkpoint at 5: that line is replayed
    ref, run = crashed_then_resumed(cfg, tmp_path, monkeypatch, 7, before_resume=logged_past_the_checkpoint)
    assert_same_run(ref, run)


def test_resume_refuses_while_the_previous_process_still_runs(tmp_path):
    from lmforge.train.recovery import previous_run, resolve_resume
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "manifest.json").write_text(json.dumps({"status": "running", "pid": live.pid}))
        assert previous_run(tmp_path)["status"] == "alive"
        with pytest.raises(LmforgeError) as e:
            resolve_resume(tmp_path, True)
        assert f"pid {live.pid}" in e.value.message and f"kill {live.pid}" in e.value.hint
    finally:
        live.kill()
        live.wait()
    assert previous_run(tmp_path)["status"] == "crashed"  # the same manifest once the process is gone
