"""Reward models (task: reward): the Bradley-Terry loss by hand, the score at the last real token, training on a
learnable preference, `lmforge score` / `/v1/score` / grpo.reward_model giving the same numbers, exact resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmforge import api
from lmforge.errors import LmforgeError
from lmforge.tasks.reward import bradley_terry, rewards_of
from test_dpo import _pairs_jsonl, tiny_llama, tok  # noqa: F401 (fixtures)


def test_bradley_terry_equals_hand_computed_values():
    c = torch.tensor([1.5, -0.2, 0.3], dtype=torch.float64)
    r = torch.tensor([0.5, 0.4, 0.3], dtype=torch.float64)

    def nls(x):  # -log sigmoid(x)
        return math.log1p(math.exp(-x))
    plain = sum(nls(a - b) for a, b in zip(c.tolist(), r.tolist()))
    assert abs(float(bradley_terry(c, r)) - plain) < 1e-6
    m = torch.tensor([0.5, 0.0, 1.0], dtype=torch.float64)
    with_margin = sum(nls(a - b - k) for a, b, k in zip(c.tolist(), r.tolist(), m.tolist()))
    assert abs(float(bradley_terry(c, r, m)) - with_margin) < 1e-6
    centred = with_margin + 0.01 * sum((a + b) ** 2 for a, b in zip(c.tolist(), r.tolist()))
    assert abs(float(bradley_terry(c, r, m, center=0.01)) - centred) < 1e-6


def test_the_reward_is_read_at_the_last_real_token(tiny_llama):
    from transformers import AutoModelForSequenceClassification
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=1).eval()
    model.config.pad_token_id = 1
    a, b = [5, 6, 7, 8, 9], [10, 11, 12]
    ids = torch.tensor([a, b + [1, 1]])
    mask = torch.tensor([[1] * 5, [1, 1, 1, 0, 0]])
    with torch.no_grad():
        batched = rewards_of(model, ids, mask)
        alone = [float(model(input_ids=torch.tensor([x])).logits[0, 0]) for x in (a, b)]
    assert batched.tolist() == pytest.approx(alone, abs=1e-5)


def reward_config(model, data, out, **train) -> dict:
    tr = {"max_steps": 30, "learning_rate": 3e-3, "per_device_train_batch_size": 8, "seed": 2, "logging_steps": 5,
          "eval_strategy": "steps", "eval_steps": 15, "save_strategy": "no", "warmup_ratio": 0.0}
    tr.update(train)
    return {"task": "reward", "model": {"name": str(model)},
            "data": {"train": str(data / "train.jsonl"), "eval": str(data / "eval.jsonl"), "block_size": 64},
            "train": tr, "output": {"output_dir": str(out)}}


@pytest.fixture(scope="module")
def pair_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("reward-data")
    _pairs_jsonl(d / "train.jsonl", 96)
    _pairs_jsonl(d / "eval.jsonl", 24)
    return d


@pytest.fixture(scope="module")
def reward_run(tiny_llama, pair_data, tmp_path_factory):  # noqa: F811
    import conftest
    with pytest.MonkeyPatch.context() as mp:
        conftest._use_test_cache(tmp_path_factory, mp)
        return api.train(reward_config(tiny_llama, pair_data, tmp_path_factory.mktemp("rm") / "run"),
                         progress=False).run_dir


def test_a_reward_model_learns_the_preference(reward_run):
    m = json.loads((reward_run / "metrics.json").read_text())
    assert m["eval"]["accuracy"] == 1.0 and m["eval"]["accuracy"] > m["before"]["accuracy"]
    assert m["eval"]["margin"] > m["before"]["margin"] + 1.0
    assert m["eval"]["loss"] < m["before"]["loss"]
    for key in ("reward_chosen", "reward_rejected", "reward_std", "reward_p10", "reward_p90"):
        assert key in m["before"] and key in m["eval"]


def test_score_cli_api_server_and_grpo_reward_agree(reward_run, tmp_path):
    from fastapi.testclient import TestClient

    from lmforge.cli import main
    from lmforge.config import build_config
    from lmforge.tasks.grpo_eval import reward_opts
    from lmforge.tasks.rewards import load_rewards
    from lmforge.use.serve import create_app
    prompt = "he saith in the"
    replies = ["you are kind in", "you are old the"]
    convs = [[{"role": "user", "content": prompt}, {"role": "assistant", "content": r}] for r in replies]
    by_api = [r["score"] for r in api.score(reward_run, convs)]
    assert by_api[0] > by_api[1]  # the learned preference: 'kind' wins
    f = tmp_path / "in.jsonl"
    f.write_text("".join(json.dumps({"id": i, "prompt": prompt, "completion": r}) + "\n" for i, r in enumerate(replies)))
    assert main(["score", str(reward_run), "--input", str(f), "--output", str(tmp_path / "out.jsonl")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1]
    assert [r["score"] for r in rows] == pytest.approx(by_api, abs=1e-6)
    client = TestClient(create_app(reward_run))
    res = client.post("/v1/score", json={"prompt": prompt, "completions": replies})
    assert res.status_code == 200 and res.json()["scores"] == pytest.approx(by_api, abs=1e-6)
    res = client.post("/v1/score", json={"conversations": convs})
    assert res.json()["scores"] == pytest.approx(by_api, abs=1e-6)
    assert client.post("/v1/score", json={"texts": ["x"], "prompt": "y"}).status_code == 422
    assert client.post("/v1/embeddings", json={"input": "x"}).status_code == 400
    # grpo.reward_model: the same numbers, through the reward function online RL calls (TRL's convention),
    # with a conversational prompt and a weight
    cfg = build_config({"task": "grpo", "grpo": {"rewards": ["contains"], "reward_model": str(reward_run),
                                                 "reward_weights": [1.0, 0.5]}})
    rewards = load_rewards(cfg.grpo.rewards, cfg.grpo.reward_weights, reward_opts(cfg), cfg.grpo.reward_model)
    assert [r.name for r in rewards] == ["contains", "reward_model"] and rewards[1].weight == 0.5
    got = rewards[1].fn(prompts=[[{"role": "user", "content": prompt}]] * 2,
                        completions=[[{"role": "assistant", "content": r}] for r in replies], answer=["x", "y"])
    assert got == pytest.approx(by_api, abs=1e-6)
    with pytest.raises(LmforgeError, match="2 weights for 3 rewards"):
        load_rewards(["contains", "format"], [1.0, 0.5], reward_opts(cfg), str(reward_run))


def test_reward_runs_resume_exactly(tiny_llama, pair_data, tmp_path, monkeypatch):  # noqa: F811
    from test_resume import assert_same_run, crashed_then_resumed

    def cfg(out):
        return reward_config(tiny_llama, pair_data, out, max_steps=10, save_strategy="steps", save_steps=4,
                             eval_steps=5)
    ref, run = crashed_then_resumed(cfg, tmp_path, monkeypatch, 6)
    assert_same_run(ref, run)


def test_margin_column_is_read_and_checked(tmp_path):
    from lmforge.config import build_config
    from lmforge.data.preference import read_pairs
    f = tmp_path / "m.jsonl"
    f.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c", "margin": 2}) + "\n")
    assert read_pairs(str(f), build_config({"task": "reward"}))[0].margin == 2.0
    f.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c", "margin": "lots"}) + "\n")
    with pytest.raises(LmforgeError, match="row 1: column 'margin' must be a number"):
        read_pairs(str(f), build_config({"task": "reward"}))


def test_the_shared_row_gives_the_rewards_of_two_rows(tiny_llama):  # noqa: F811
    from transformers import AutoModelForSequenceClassification

    from lmforge.tasks.reward import make_collate, pair_rewards, probe_shared_layout
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=1).eval()
    model.config.pad_token_id = 1
    assert probe_shared_layout(model, 1)
    rows = [{"prompt": [5, 6, 7], "chosen": [8, 9], "rejected": [10, 11, 12], "margin": 0.0},
            {"prompt": [5], "chosen": [13, 14, 15, 16], "rejected": [17], "margin": 0.0}]
    with torch.no_grad():
        shared = pair_rewards(model, make_collate(1, "shared")(rows))
        separate = pair_rewards(model, make_collate(1, "rows")(rows))
        alone = [[float(model(input_ids=torch.tensor([r["prompt"] + r[side]])).logits[0, 0]) for r in rows]
                 for side in ("chosen", "rejected")]
    for a, b, c in zip(shared, separate, alone):
        assert a.tolist() == pytest.approx(c, abs=1e-5) and b.tolist() == pytest.approx(c, abs=1e-5)
