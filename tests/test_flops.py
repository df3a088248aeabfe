"""MFU counts the FLOPs that really run: 6 x matmul parameters per trained token, with the output layer counted
only at the positions where a task runs it (sft and causal-lm's chunked loss: the target tokens; masked-lm: the
masked ones). Checked against torch's FLOP counter on one training step of each, and MFU <= 1 in a run."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lmforge import api
from lmforge.tasks.lm_loss import CausalLMLoss
from lmforge.train.perf import task_flop_params


def _llama(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                        tie_word_embeddings=True))


def _measured(model, batch, loss) -> int:
    # the chunked loss accumulates the head's weight gradient in place (addmm_), which the counter's own table
    # leaves out: counted with the formula of addmm
    from torch.utils.flop_counter import mm_flop

    def addmm_(self_shape, a, b, *args, out_val=None, **kwargs):
        return mm_flop(getattr(a, "shape", a), getattr(b, "shape", b))
    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: addmm_}) as counter:
        loss(model, batch).backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("trained_share", [1.0, 0.25])
def test_counted_flops_match_the_measured_ones(trained_share):
    """A large vocabulary (the output layer dominates, as in real small models) so a head counted at every
    token when it runs at a quarter of them would overshoot the measured FLOPs by far."""
    model = _llama(4096)
    ids = torch.randint(0, 4096, (4, 32), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    if trained_share < 1.0:
        labels[:, : int(32 * (1 - trained_share))] = -100  # only the last quarter trained (an sft reply)
    batch = {"input_ids": ids, "labels": labels}
    measured = _measured(model, batch, CausalLMLoss(attention="attention_mask", chunked=True))
    counted = 6 * task_flop_params(model, trained_share) * ids.numel()
    assert counted <= measured * 1.02, (counted, measured)  # never more than what ran: MFU cannot pass 100%
    assert counted >= 0.75 * measured, (counted, measured)  # attention score FLOPs are the uncounted rest


def test_an_sft_run_reports_mfu_within_one_and_counts_its_trained_tokens(tmp_path):
    from conftest import _use_test_cache  # noqa: F401 - the fixture that pins the peak FLOP/s is autouse
    from test_reliability3 import _base_gpt2, _chat_rows
    cfg = {"task": "sft", "model": {"name": str(_base_gpt2(tmp_path))},
           "data": {"train": _chat_rows(tmp_path / "c.jsonl", 40)},
           "train": {"max_steps": 2, "per_device_train_batch_size": 4, "eval_strategy": "no", "save_strategy": "no",
                     "logging_steps": 1},
           "output": {"output_dir": str(tmp_path / "run")}}
    from lmforge.config import build_config
    from lmforge.tasks import sft
    parts = sft.TASK.setup(build_config(cfg))
    share = parts.summary["trained_tokens"] / parts.summary["train_tokens"]
    assert share < 0.5 and parts.output_layer_share == pytest.approx(share)  # the head runs at trained tokens only
    res = api.train(cfg, progress=False)
    lines = [json.loads(x) for x in (res.run_dir / "log.jsonl").read_text().splitlines()]
    mfus = [r["mfu"] for r in lines if r.get("mfu") is not None] + [res.metrics["train"]["mfu"]]
    assert mfus and all(0 < m <= 1 for m in mfus)


def test_a_cpu_peak_probed_on_busy_cores_is_probed_again_when_a_run_beats_it(tmp_path, monkeypatch, caplog):
    """MFU above 1 means the cached peak is too low (probed while other work shared the cores): the run probes
    once more, keeps the higher value in the cache, and the probe never touches the global random stream."""
    import json
    import logging

    import torch

    from lmforge import fs
    from lmforge.train import perf
    monkeypatch.setattr(fs, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(perf, "cache_dir", lambda: tmp_path)
    (tmp_path / "peak_flops.json").write_text(json.dumps({perf._cpu_key(): 1e6}))  # absurdly low: a busy probe
    torch.manual_seed(5)
    before = torch.rand(3)
    torch.manual_seed(5)
    new = perf.reprobe_cpu_peak()
    assert torch.equal(torch.rand(3), before)  # the global stream untouched
    assert new > 1e8 and json.loads((tmp_path / "peak_flops.json").read_text())[perf._cpu_key()] == new
    assert perf.reprobe_cpu_peak() >= new  # never lowered
