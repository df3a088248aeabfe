"""Beyond one process, on CPU with gloo: FSDP (torch's FSDP2, applied by lmforge where accelerate falls back to
DDP on CPUs) follows the one-process loss curve and writes full weights; two "machines" on 127.0.0.1 launched as
on two nodes equal the two-process single-node run; a multi-process run killed with SIGKILL and relaunched with
--resume ends exactly where the uninterrupted run ends (DDP and FSDP)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import cls_config, toy_sentiment_rows, write_csv
from safetensors.torch import load_file
from test_resume import _last_step, assert_same_run, run_config

from lmforge import api

ROOT = Path(__file__).resolve().parents[1]
FSDP_CPU = ROOT / "examples" / "accelerate" / "fsdp-cpu.yaml"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")


def _train_cmd(cfg: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "lmforge.cli", "--quiet", "train", str(cfg), "--no-progress", *extra]


def _run(cmd, cwd=None, timeout=400) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _kill_at(cmd: list[str], run: Path, step: int) -> None:
    """Start a multi-process run; once its log reaches `step`, SIGKILL the launcher and every worker."""
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    deadline = time.time() + 300
    while p.poll() is None and _last_step(run) < step and time.time() < deadline:
        time.sleep(0.01)
    assert p.poll() is None, f"the run ended before step {step}:\n{p.stderr.read()[-2000:]}"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(60)
    assert not (run / "model").exists()  # really cut off mid-run


def _losses(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


# -------------------------------------------------------------------------------------------------- FSDP
def test_fsdp_on_two_cpu_processes_matches_one_process_and_writes_full_weights(tiny_bert_nodrop, tmp_path):
    train = write_csv(tmp_path / "train.csv", toy_sentiment_rows(96, seed=0))
    test = write_csv(tmp_path / "test.csv", toy_sentiment_rows(18, seed=5))
    common = dict(learning_rate=3e-3, group_by_length=False, eval_strategy="no", save_strategy="epoch",
                  per_device_eval_batch_size=4, report_to="none", load_best_model_at_end=False)
    cfg = cls_config(train, test, tmp_path / "fsdp", tiny_bert_nodrop, per_device_train_batch_size=8, **common)
    (tmp_path / "fsdp.yaml").write_text(yaml.safe_dump(cfg))
    _run(_train_cmd(tmp_path / "fsdp.yaml", "--accelerate-config", str(FSDP_CPU)), cwd=tmp_path)
    run = tmp_path / "fsdp"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["distributed_type"] == "FSDP2 (lmforge, CPU)" and manifest["num_processes"] == 2

    single = api.train(cls_config(train, test, tmp_path / "single", tiny_bert_nodrop, per_device_train_batch_size=16,
                                  **common), progress=False)
    a, b = _losses(run), _losses(single.run_dir)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-5, abs=1e-6)
    assert max(r["loss"] for r in b) - min(r["loss"] for r in b) > 0.01  # the curve moves
    assert [r["grad_norm"] for r in a] == pytest.approx([r["grad_norm"] for r in b], rel=1e-4)
    # model/ is a plain HF folder with the full (gathered) weights, equal to the one-process run's
    wa, wb = load_file(str(run / "model" / "model.safetensors")), load_file(str(single.run_dir / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    # the checkpoint's optimizer state is full too, keyed by parameter name (FSDP resumes from it)
    opt = torch.load(run / "checkpoints" / "step-6" / "optimizer.pt", weights_only=True)
    name = "bert.embeddings.word_embeddings.weight"
    assert opt["state"][name]["exp_avg"].shape == wa[name].shape
    from transformers import AutoModelForSequenceClassification
    assert AutoModelForSequenceClassification.from_pretrained(run / "model").num_labels == 2


@pytest.mark.slow
def test_fsdp_causal_lm_matches_one_process(tmp_path):
    from test_causal_lm import lm_config, make_tiny, toy_docs
    (tmp_path / "train.txt").write_text("\n".join(toy_docs(300, seed=0)) + "\n")
    model = make_tiny(tmp_path / "llama", "llama")
    common = dict(max_steps=6, eval_strategy="no", save_strategy="no", logging_steps=1, group_by_length=False)
    cfg = lm_config(tmp_path / "train.txt", None, tmp_path / "fsdp", model, per_device_train_batch_size=2, **common)
    cfg["data"].pop("eval")
    cfg["data"]["sample_prompts"] = ["the food"]  # generation under FSDP: every process runs the forwards
    (tmp_path / "fsdp.yaml").write_text(yaml.safe_dump(cfg))
    _run(_train_cmd(tmp_path / "fsdp.yaml", "--accelerate-config", str(FSDP_CPU)), cwd=tmp_path)
    single_cfg = json.loads(json.dumps(cfg))
    single_cfg["train"]["per_device_train_batch_size"] = 4
    single_cfg["output"]["output_dir"] = str(tmp_path / "single")
    single = api.train(single_cfg, progress=False)
    a, b = _losses(tmp_path / "fsdp"), _losses(single.run_dir)
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-5, abs=1e-6)
    assert b[0]["loss"] - b[-1]["loss"] > 0.05


@pytest.fixture(scope="module")
def multi_runs(tiny_bert, tmp_path_factory):
    """The resume tests' 30-step classification config (dropout on, accumulation 2), run uninterrupted with two
    DDP processes and with two FSDP processes."""
    d = tmp_path_factory.mktemp("multi")
    out = {}
    for kind, extra in (("ddp", ["--num-processes", "2"]), ("fsdp", ["--accelerate-config", str(FSDP_CPU)])):
        cfg = d / f"{kind}.yaml"
        cfg.write_text(yaml.safe_dump(run_config(d, tiny_bert, d / f"ref-{kind}")))
        _run(_train_cmd(cfg, *extra), cwd=d)
        out[kind] = d / f"ref-{kind}"
    return d, out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_a_killed_multi_process_run_resumes_exactly(multi_runs, tiny_bert, kind, tmp_path):
    d, refs = multi_runs
    extra = ["--num-processes", "2"] if kind == "ddp" else ["--accelerate-config", str(FSDP_CPU)]
    cfg = tmp_path / "run.yaml"
    shutil.copy(d / "train.csv", tmp_path / "train.csv")
    shutil.copy(d / "eval.csv", tmp_path / "eval.csv")
    cfg.write_text(yaml.safe_dump(run_config(tmp_path, tiny_bert, tmp_path / "run")))
    _kill_at(_train_cmd(cfg, *extra), tmp_path / "run", 13)  # after the step-10 checkpoint
    _run(_train_cmd(cfg, *extra, "--resume"), cwd=tmp_path)
    assert_same_run(refs[kind], tmp_path / "run")


@pytest.mark.slow
def test_two_machines_on_one_host_equal_the_two_process_run(multi_runs, tiny_bert, tmp_path):
    """Launched as on two nodes: the same command on each, machine_rank 0 and 1, a main address and port."""
    from lmforge.tools.launch import free_port
    d, refs = multi_runs
    port = free_port()
    cfg = tmp_path / "run.yaml"
    shutil.copy(d / "train.csv", tmp_path / "train.csv")
    shutil.copy(d / "eval.csv", tmp_path / "eval.csv")
    cfg.write_text(yaml.safe_dump(run_config(tmp_path, tiny_bert, tmp_path / "run")))
    procs = []
    for rank in (1, 0):
        node = yaml.safe_load((ROOT / "examples" / "accelerate" / "ddp-2nodes.yaml").read_text())
        node.update(machine_rank=rank, main_process_ip="127.0.0.1", main_process_port=port, num_processes=2,
                    mixed_precision="no")
        node.pop("gpu_ids", None)
        (tmp_path / f"node{rank}.yaml").write_text(yaml.safe_dump(node))
        procs.append(subprocess.Popen([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                                       str(tmp_path / f"node{rank}.yaml"), "-m", "lmforge.cli", "--quiet", "train",
                                       str(cfg), "--no-progress"], env=ENV, cwd=tmp_path, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=400)
        assert p.returncode == 0, err[-3000:]
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["num_processes"] == 2
    assert_same_run(refs["ddp"], tmp_path / "run")


def test_a_deepspeed_config_on_cpu_processes_is_said_not_silently_dropped(monkeypatch, caplog):
    """accelerate runs a DeepSpeed config on CPU processes as plain DDP; lmforge says so."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from lmforge.train import sharding
    acc = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, num_processes=2, is_main_process=True)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with caplog.at_level("WARNING", logger="lmforge"):
        assert sharding.warn_deepspeed_fallback(acc)
    assert "ZeRO is not in use" in caplog.text
    assert not sharding.warn_deepspeed_fallback(SimpleNamespace(distributed_type=DistributedType.DEEPSPEED))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert sharding.cpu_fsdp(acc) and not sharding.cpu_fsdp(SimpleNamespace(distributed_type=DistributedType.FSDP))


# -------------------------------------------------------------------------------------- batch order
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_default_length_grouping_gives_two_processes_the_one_process_batches(mode, tiny_bert_nodrop, tmp_path):
    """With train.group_by_length at its default (true) and texts of very different lengths, a 2-process run
    (per-device batch 4) trains on the global batches of the 1-process run (batch 8): step-1 loss and grad norm
    are equal. (Before the batch order was global, length grouping ran per process: 0.6941 vs 0.6894.)"""
    rows = [(" ".join([text] * (1 + (i * 7) % 9)), label) for i, (text, label) in enumerate(toy_sentiment_rows(96, 4))]
    train = write_csv(tmp_path / "train.csv", rows)
    common = dict(learning_rate=3e-3, max_steps=3, eval_strategy="no", save_strategy="no", report_to="none",
                  load_best_model_at_end=False)
    cfg = cls_config(train, train, tmp_path / "multi", tiny_bert_nodrop, per_device_train_batch_size=4, **common)
    del cfg["data"]["eval"]
    (tmp_path / "multi.yaml").write_text(yaml.safe_dump(cfg))
    extra = ["--accelerate-config", str(FSDP_CPU)] if mode == "fsdp" else ["--num-processes", "2"]
    _run(_train_cmd(tmp_path / "multi.yaml", *extra), cwd=tmp_path)
    one_cfg = dict(cfg, train=dict(cfg["train"], per_device_train_batch_size=8),
                   output={"output_dir": str(tmp_path / "one")})
    one = api.train(one_cfg, progress=False).run_dir
    a, b = _losses(tmp_path / "multi"), _losses(one)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    assert a[0]["loss"] == pytest.approx(b[0]["loss"], rel=1e-5)
    assert a[0]["grad_norm"] == pytest.approx(b[0]["grad_norm"], rel=1e-4)
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-4)
