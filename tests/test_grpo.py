"""Online RL (task: grpo): each loss variant and the advantages equal a hand computation; the built-in rewards;
a broken reward function stops the run naming itself; the sampler's shared prefill draws what separate prefills
draw, and a completion does not depend on its batch; a learnable toy reward rises; the preflight stops a run with
nothing to learn before step 1; the KL reference with LoRA switched off is the base model; exact resume (also with
num_iterations > 1 mid-way); SIGKILL + --resume is bit-identical; eval reports strict / lenient pass@1 and pass@k."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from lmforge import api
from lmforge.config import build_config
from lmforge.errors import LmforgeError
from lmforge.tasks import grpo, grpo_loss, rewards
from lmforge.tasks.rollout import RolloutParams, TorchSampler
from lmforge.tokenizer import train_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

SPECIALS = ["<|im_start|>", "<|im_end|>", "</s>"]
WORDS = "thou art kind you are and he saith says unto to them old english yes no maybe".split()


# ----------------------------------------------------------------------------------- the formulas, by hand
def test_advantages_equal_a_hand_computation_with_flat_groups_and_none():
    nan = float("nan")
    r = torch.tensor([1.0, 0.0, 0.0, 1.0,   0.5, 0.5, 0.5, 0.5,   2.0, nan, 0.0, 1.0], dtype=torch.float64)
    a = grpo_loss.advantages(r, 4, "group")
    # group 1: mean 0.5, unbiased std sqrt(1/3); group 2 flat; group 3 without the None: 2, 0, 1 -> mean 1, std 1
    s1 = math.sqrt(1 / 3)
    want = [0.5 / (s1 + 1e-4), -0.5 / (s1 + 1e-4), -0.5 / (s1 + 1e-4), 0.5 / (s1 + 1e-4), 0, 0, 0, 0,
            1 / (1 + 1e-4), 0.0, -1 / (1 + 1e-4), 0.0]
    assert a.advantages.tolist() == pytest.approx(want, abs=1e-6)
    assert a.zero_std.tolist() == [False, True, False]
    none = grpo_loss.advantages(r, 4, "none")
    assert none.advantages.tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, 1, 0, -1, 0], abs=1e-9)
    # batch: the std of every non-None reward of the batch (11 values)
    vals = [x for x in r.tolist() if not math.isnan(x)]
    m = sum(vals) / len(vals)
    sb = math.sqrt(sum((x - m) ** 2 for x in vals) / (len(vals) - 1))
    batch = grpo_loss.advantages(r, 4, "batch")
    assert batch.advantages.tolist() == pytest.approx([x / (sb + 1e-4) for x in none.advantages.tolist()], abs=1e-6)
    # RLOO: r_i minus the mean of the group's others (None left out)
    rloo = grpo_loss.advantages(r, 4, "none", "rloo")
    want = [1 - 1 / 3, 0 - 2 / 3, 0 - 2 / 3, 1 - 1 / 3, 0, 0, 0, 0, 2 - 0.5, 0, 0 - 1.5, 1 - 1.0]
    assert rloo.advantages.tolist() == pytest.approx(want, abs=1e-9)


def _hand_token_loss(lp, old, adv, eps, eps_hi, level, beta, ref, mask):
    """l_t for each row and token in plain floats (tasks/grpo_loss.py's formulas)."""
    out = []
    for i, row in enumerate(lp):
        n = sum(mask[i])
        seq_w = math.exp(sum((row[t] - old[i][t]) for t in range(len(row)) if mask[i][t]) / max(1, n))
        line = []
        for t, x in enumerate(row):
            w = math.exp(x - old[i][t]) if level == "token" else seq_w
            l = -min(w * adv[i], min(max(w, 1 - eps), 1 + eps_hi) * adv[i])
            if beta:
                d = ref[i][t] - x
                l += beta * (math.exp(d) - d - 1)
            line.append(l)
        out.append(line)
    return out


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_each_loss_variant_equals_a_hand_computed_batch(loss_type, level, beta):
    lp = [[-1.2, -0.4, -2.0, -0.1], [-0.3, -0.9, -1.5, -3.0], [-2.2, -0.05, -0.7, -1.1]]
    old = [[-1.0, -0.6, -2.1, -0.1], [-0.6, -0.5, -1.5, -2.0], [-2.0, -0.30, -0.7, -1.6]]
    ref = [[-1.1, -0.5, -1.9, -0.3], [-0.4, -0.8, -1.4, -2.5], [-2.1, -0.2, -0.9, -1.0]]
    adv = [1.3, -0.7, 0.4]
    mask = [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    eps, hi, L = 0.2, 0.28, 6
    tl = grpo_loss.token_loss(torch.tensor(lp, dtype=torch.float64), torch.tensor(old, dtype=torch.float64),
                              torch.tensor(adv), torch.tensor(mask), eps, hi, level, beta,
                              torch.tensor(ref, dtype=torch.float64))
    got, items = grpo_loss.reduce(tl.per_token, torch.tensor(mask), loss_type, L)
    h = _hand_token_loss(lp, old, adv, eps, hi, level, beta, ref, mask)
    masked = [[h[i][t] for t in range(4) if mask[i][t]] for i in range(3)]
    tokens = sum(len(m) for m in masked)
    want = {"grpo": sum(sum(m) / len(m) for m in masked) / 3, "bnpo": sum(map(sum, masked)) / tokens,
            "dr_grpo": sum(map(sum, masked)) / (3 * L), "dapo": sum(map(sum, masked)) / tokens}[loss_type]
    assert float(got) / items == pytest.approx(want, abs=1e-6)
    assert items == {"grpo": 3, "bnpo": 1, "dr_grpo": 3, "dapo": tokens}[loss_type]


def test_on_policy_loss_is_the_policy_gradient():
    """num_iterations 1: old = logp detached, the ratio is 1 and the gradient of l_t is -A * grad logp_t."""
    lp = torch.tensor([[-1.0, -2.0], [-0.5, -0.25]], requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    tl = grpo_loss.token_loss(lp, None, adv, torch.ones(2, 2))
    tl.per_token.sum().backward()
    assert torch.equal(tl.ratio.detach(), torch.ones(2, 2))
    assert lp.grad.tolist() == [[-2.0, -2.0], [1.0, 1.0]]


# ----------------------------------------------------------------------------------- rewards
def _score(fns, completions, **cols):
    return rewards.score(fns, ["p"] * len(completions), completions, [[1]] * len(completions),
                         {k: v for k, v in cols.items()}).tolist()


def test_builtin_rewards():
    opts = rewards.RewardOptions(format_pattern=r"^\s*-?\d+\s*$", max_completion_length=10, length_buffer=4)
    fns = rewards.load_rewards(["exact_match", "contains", "number_match", "format"], None, opts)
    comps = ["75", " 75.", "The answer is 75", "175", "7.5", "1,075", "75 or 76"]
    got = _score(fns, comps, answer=["75", "75", "75", "75", "75", "1075", "75"])
    assert [r[0] for r in got] == [1, 1, 0, 0, 0, 1, 0]  # strict
    assert [r[1] for r in got] == [1, 1, 1, 0, 0, 1, 1]  # lenient: whole matches only
    assert [r[2] for r in got] == [1, 1, 1, 0, 0, 1, 0]  # the last number
    assert [r[3] for r in got] == [1, 0, 0, 1, 0, 0, 0]
    lp = rewards.load_rewards(["length_penalty"], None, opts)[0]
    assert lp.fn(completions=["a"] * 4, completion_ids=[[0] * 5, [0] * 6, [0] * 8, [0] * 10]) == [0.0, 0.0, -0.5, -1.0]
    # conversational completions (TRL's form) and a reward that does not apply
    conv = [[{"role": "assistant", "content": "75"}]]
    assert _score(fns[:1], conv, answer=["75"]) == [[1.0]]
    assert math.isnan(_score(fns[2:3], ["12"], answer=["not a number"])[0][0])
    assert rewards.combine(torch.tensor([[1.0, float("nan")], [float("nan")] * 2]),
                           rewards.load_rewards(["exact_match", "contains"], [2.0, 0.5], opts)).tolist()[0] == 2.0


@pytest.mark.parametrize("bad, says", [
    (lambda completions, **kw: 1 / 0, "reward function broken raised ZeroDivisionError"),
    (lambda completions, **kw: [float("nan")] * len(completions), "reward function broken returned nan for data row 12"),
    (lambda completions, **kw: [1.0], "reward function broken returned 1 values for 3 completions"),
    (lambda completions, **kw: ["high"] * len(completions), "reward function broken returned 'high' for data row 12"),
])
def test_a_broken_reward_stops_with_its_name_and_row(bad, says):
    fns = [rewards.Reward("broken", bad, 1.0)]
    with pytest.raises(LmforgeError) as e:
        rewards.score(fns, ["p"] * 3, ["a", "b", "c"], [[1]] * 3, {}, [12, 12, 12])
    assert says in str(e.value)


# ----------------------------------------------------------------------------------- a tiny model
@pytest.fixture(scope="module")
def tok():
    texts = [" ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(10)) for i in range(300)]
    t = train_tokenizer("byte-level-bpe", texts=texts, vocab_size=300, min_frequency=1,
                        special_tokens=SPECIALS).tokenizer
    t.eos_token = "</s>"
    t.pad_token = "</s>"
    return t


@pytest.fixture(scope="module")
def tiny_llama(tok, tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM
    d = tmp_path_factory.mktemp("tiny-llama-grpo")
    tok.save_pretrained(d)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).save_pretrained(d)
    return d


def _load(d):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return AutoModelForCausalLM.from_pretrained(d).eval(), AutoTokenizer.from_pretrained(d)


def test_shared_prefill_draws_what_separate_prefills_draw_and_batches_do_not_matter(tiny_llama):
    model, t = _load(tiny_llama)
    prompts = [t("he saith thou art")["input_ids"], t("you are")["input_ids"], t("unto them old english")["input_ids"]]
    p = RolloutParams(max_new_tokens=12, temperature=1.0, top_p=0.9, top_k=50)
    seeds = list(range(100, 112))
    shared = TorchSampler({t.eos_token_id}, t.pad_token_id, True).sample(model, prompts, 4, p, seeds)
    alone = TorchSampler({t.eos_token_id}, t.pad_token_id, False).sample(model, prompts, 4, p, seeds)
    assert shared.ids == alone.ids and shared.truncated == alone.truncated
    assert shared.prefill_rows == 3 and alone.prefill_rows == 12  # the prompt's forward pass once per group
    assert len({tuple(c) for c in shared.ids}) > 6  # the group's samples differ
    one = TorchSampler({t.eos_token_id}, t.pad_token_id).sample(model, prompts[1:2], 4, p, seeds[4:8])
    assert one.ids == shared.ids[4:8]  # a completion depends on its seed and the weights, not its batch
    greedy = TorchSampler({t.eos_token_id}, t.pad_token_id).sample(model, prompts[:1], 1, RolloutParams(8, 0.0), [0])
    with torch.no_grad():
        ref = model.generate(torch.tensor([prompts[0]]), max_new_tokens=8, do_sample=False,
                             eos_token_id=t.eos_token_id, pad_token_id=t.pad_token_id)[0, len(prompts[0]):].tolist()
    assert greedy.ids[0] == ref[:len(greedy.ids[0])]


def test_training_pass_with_each_prompt_once_per_group_equals_whole_rows(tiny_llama):
    """The shared training forward (prompt once, KV cache repeated for the group) gives the log-probs and the
    gradients of running every prompt + completion row whole."""
    from lmforge.tasks.rollout import completion_logits, rollout_batch, shared_completion_logits, token_logps
    from lmforge.tasks.rollout import left_padded
    model, t = _load(tiny_llama)
    model.train()
    prompts = [t("he saith thou art")["input_ids"], t("you are")["input_ids"]]
    comps = [[5, 9, 11], [7], [12, 13, 14, 15], [8, 8]]
    rb = rollout_batch([p for p in prompts for _ in range(2)], comps, t.pad_token_id)
    p_ids, p_mask = left_padded(prompts, t.pad_token_id, "cpu")
    grads = []
    for shared in (False, True):
        model.zero_grad()
        logits = shared_completion_logits(model, p_ids, p_mask, rb.completion_ids, rb.completion_mask, 2) if shared \
            else completion_logits(model, rb.input_ids, rb.attention_mask, rb.completion_ids.shape[1])
        lp = token_logps(logits, rb.completion_ids) * rb.completion_mask
        lp.sum().backward()
        grads.append((lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-5)
    for n in grads[0][1]:
        assert torch.allclose(grads[0][1][n], grads[1][1][n], atol=1e-5), n


def _prompts_jsonl(path, n: int):
    rows = [{"prompt": f"{WORDS[i % 7]} {WORDS[(i * 3) % 11]} saith", "answer": "yes"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _reward_module(folder, name: str, body: str):
    (folder / f"{name}.py").write_text(body)
    sys.modules.pop(name, None)


SAY_YES = """
def say_yes(prompts, completions, completion_ids, answer, **kw):
    # "say the word yes", graded: the share of the completion's letters that are y, e or s
    out = []
    for c in completions:
        letters = [ch for ch in c if ch.isalpha()]
        out.append(sum(ch in "yes" for ch in letters) / max(1, len(letters)))
    return out
"""

def _config(data, model, out, **sections) -> dict:
    cfg = {"task": "grpo", "model": {"name": str(model)}, "data": {"train": str(data), "validation_split": 0.2},
           "grpo": {"num_generations": 6, "max_completion_length": 6, "rewards": ["toy_rewards:say_yes"],
                    "preflight_prompts": 4},
           "train": {"max_steps": 6, "learning_rate": 3e-3, "per_device_train_batch_size": 4, "logging_steps": 2,
                     "eval_steps": 3, "seed": 3, "warmup_steps": 0},
           "output": {"output_dir": str(out)}}
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    return cfg


@pytest.fixture()
def toy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _reward_module(tmp_path, "toy_rewards", SAY_YES)
    return _prompts_jsonl(tmp_path / "prompts.jsonl", 40)


def test_a_learnable_toy_reward_rises(toy, tiny_llama, tmp_path):
    res = api.train(_config(toy, tiny_llama, tmp_path / "run", train={"max_steps": 40, "logging_steps": 5, "learning_rate": 1e-2,
                                                                      "eval_steps": 30}), progress=False)
    log = [json.loads(x) for x in (res.run_dir / "log.jsonl").read_text().splitlines()]
    train = [r for r in log if "reward" in r and "loss" in r]
    assert train[-1]["reward"] > train[0]["reward"] + 0.3, [r["reward"] for r in train]  # from about 0.12
    for k in ("reward_std", "frac_reward_zero_std", "completion_length", "completion_length_max", "truncated",
              "clip_ratio", "entropy", "generation_s", "reward_toy_rewards:say_yes"):
        assert k in train[0], k
    m = json.loads((res.run_dir / "metrics.json").read_text())
    assert m["eval"]["reward"] > m["before"]["reward"]
    samples = next(r["samples"] for r in log if "samples" in r)
    assert len(samples[0]["group"]) == 6 and "toy_rewards:say_yes" in samples[0]["group"][0]


def test_preflight_stops_a_run_with_nothing_to_learn_before_step_1(toy, tiny_llama, tmp_path):
    _reward_module(tmp_path, "flat_rewards", "def flat(completions, **kw):\n    return [0.0] * len(completions)\n")
    cfg = _config(toy, tiny_llama, tmp_path / "run", grpo={"rewards": ["flat_rewards:flat"]})
    with pytest.raises(LmforgeError) as e:
        api.train(cfg, progress=False)
    assert "nothing to learn" in str(e.value) and "grpo.temperature" in e.value.hint
    assert not (tmp_path / "run" / "log.jsonl").exists() or "loss" not in (tmp_path / "run" / "log.jsonl").read_text()


def test_a_raising_reward_exits_2_with_its_name(toy, tiny_llama, tmp_path):
    _reward_module(tmp_path, "bad_rewards", "def bad(completions, answer, **kw):\n    raise KeyError('oops')\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_config(toy, tiny_llama, tmp_path / "run", grpo={"rewards": ["bad_rewards:bad"]})))
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "lmforge.cli", "train", str(cfg), "--no-progress"], capture_output=True,
                       text=True, env=env, timeout=300, cwd=tmp_path)
    assert p.returncode == 2, p.stderr[-2000:]
    err = " ".join(p.stderr.split())
    assert "reward function bad_rewards:bad raised KeyError" in err and "Traceback" not in err


def test_lora_reference_with_adapters_off_is_the_base_model(toy, tiny_llama, tmp_path):
    cfg = build_config(_config(toy, tiny_llama, tmp_path / "run", grpo={"beta": 0.1}, peft={"r": 4}))
    model, t = _load(tiny_llama)
    ids = torch.tensor([t("he saith thou art kind")["input_ids"]])
    att = torch.ones_like(ids)
    comp = ids[:, -3:]
    ro = grpo.GRPO.rollouts(cfg, model, t)
    batch = {"input_ids": ids, "attention_mask": att, "completion_ids": comp}
    with torch.no_grad():
        base = ro.logps(model, batch)
    from peft import LoraConfig, get_peft_model
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).base_model.model
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.add_(0.5)  # the adapter now changes the model
        ro.reference = "adapter"
        assert not torch.allclose(ro.logps(lora, batch), base)
        assert torch.equal(ro.reference_logps(lora, batch), base)


@pytest.mark.parametrize("iterations", [1, 2])
def test_grpo_resumes_exactly(toy, tiny_llama, tmp_path, monkeypatch, iterations):
    from test_resume import assert_same_run, crashed_then_resumed

    def cfg(out):
        return _config(toy, tiny_llama, out, grpo={"num_iterations": iterations, "beta": 0.05},
                       train={"max_steps": 8, "logging_steps": 3, "save_strategy": "steps", "save_steps": 3,
                              "gradient_accumulation_steps": 2, "per_device_train_batch_size": 2})
    ref, run = crashed_then_resumed(cfg, tmp_path, monkeypatch, 5)  # step 5: inside a repeat when iterations = 2
    assert_same_run(ref, run)


def test_sigkill_and_resume_is_bit_identical(toy, tiny_llama, tmp_path):
    from test_resume import _cli, _run_until, assert_same_run
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               PYTHONPATH=str(tmp_path))
    for name in ("ref", "run"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(_config(
            toy, tiny_llama, tmp_path / name, train={"max_steps": 10, "logging_steps": 1, "save_strategy": "steps",
                                                     "save_steps": 2, "eval_steps": 5})))
    ref = subprocess.run(_cli(tmp_path / "ref.yaml"), capture_output=True, text=True, env=env, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    p = _run_until(_cli(tmp_path / "run.yaml"), tmp_path / "run", 5, signal.SIGKILL, env)
    assert p.returncode == -signal.SIGKILL
    p = subprocess.run(_cli(tmp_path / "run.yaml", "--resume"), capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert_same_run(tmp_path / "ref", tmp_path / "run")
    a = [json.loads(x) for x in (tmp_path / "ref" / "log.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r.get("samples") for r in a] == [r.get("samples") for r in b]  # the same completions and rewards


def test_eval_reports_strict_lenient_pass_at_1_and_pass_at_k(toy, tiny_llama, tmp_path):
    res = api.train(_config(toy, tiny_llama, tmp_path / "run", grpo={"rewards": ["toy_rewards:say_yes",
                                                                                "contains"]},
                            train={"max_steps": 2}), progress=False)
    out = api.evaluate(res.run_dir, data=str(toy), overrides={"grpo": {"eval_k": 4}})
    m = out.metrics if hasattr(out, "metrics") else out
    for k in ("accuracy_strict", "accuracy_lenient", "pass@4_strict", "pass@4_lenient", "reward",
              "reward_contains", "reward_toy_rewards:say_yes"):
        assert k in m, (k, sorted(m))
    assert m["pass@4_lenient"] >= m["accuracy_lenient"] - 1e-9 or m["pass@4_lenient"] >= 0
    assert m["prompts"] == 40


def test_two_processes_draw_and_learn_what_one_does(toy, tiny_llama, tmp_path):
    """--num-processes 2 (gloo): each process samples whole groups for its half of the global batch, with the
    seeds one process uses, so the completions and rewards are the same and the weights follow within float
    rounding (the all-reduced gradient sums in another order)."""
    common = {"train": {"max_steps": 4, "logging_steps": 1, "eval_strategy": "no", "save_strategy": "no",
                        "group_by_length": False, "report_to": "none", "load_best_model_at_end": False}}
    two = _config(toy, tiny_llama, tmp_path / "unused", **common)
    two["train"]["per_device_train_batch_size"] = 2
    del two["output"]  # the default run name: every process must agree on it
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(two))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(tmp_path))
    p = subprocess.run([sys.executable, "-m", "lmforge.cli", "--quiet", "train", "two.yaml", "--num-processes", "2",
                        "--no-progress"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    run2 = next((tmp_path / "runs").iterdir())
    one = api.train(_config(toy, tiny_llama, tmp_path / "one", **common), progress=False).run_dir
    a = [json.loads(x) for x in (one / "log.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (run2 / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    for k in ("reward", "completion_length", "frac_reward_zero_std", "truncated"):
        assert [r[k] for r in b] == pytest.approx([r[k] for r in a], abs=1e-6), k
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-4, abs=1e-6)
    from safetensors.torch import load_file
    wa, wb = load_file(str(one / "model" / "model.safetensors")), load_file(str(run2 / "model" / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


TRL_STYLE = """
SEEN = []

def with_state(prompts, completions, completion_ids, trainer_state, log_metric, log_extra, answer, **kw):
    # TRL 1.16's full call: the step, a scalar of its own, an extra column
    SEEN.append(trainer_state.global_step)
    log_metric("yes_share", sum("y" in c for c in completions) / len(completions))
    log_extra("note", ["x"] * len(completions))
    return [float(trainer_state.max_steps == 4)] * len(completions)

def plain(prompts, completions, completion_ids, answer):
    # no **kwargs: TRL's extra keywords are not forced on it
    return [float(len(c) % 2) for c in completions]
"""


def test_trl_reward_keywords_state_metric_and_extra(toy, tiny_llama, tmp_path):
    _reward_module(tmp_path, "trl_style", TRL_STYLE)
    cfg = _config(toy, tiny_llama, tmp_path / "run", grpo={"rewards": ["trl_style:with_state", "trl_style:plain",
                                                                       "toy_rewards:say_yes"], "preflight_prompts": 0},
                  train={"max_steps": 4, "logging_steps": 2, "eval_strategy": "no"})
    res = api.train(cfg, progress=False)
    import trl_style
    # trainer_state.global_step: the optimizer steps done before the rollout (evaluations before and after too)
    assert trl_style.SEEN == sorted(trl_style.SEEN) and set(trl_style.SEEN) == {0, 1, 2, 3}
    log = [json.loads(x) for x in (res.run_dir / "log.jsonl").read_text().splitlines()]
    train = [r for r in log if "loss" in r]
    assert len(train) == 2 and all(0.0 <= r["yes_share"] <= 1.0 for r in train)
    assert all(r["reward_trl_style:with_state"] == 1.0 for r in train)  # it saw max_steps 4
    _reward_module(tmp_path, "clash", "def f(completions, log_metric, **kw):\n    log_metric('loss', 1.0)\n"
                                      "    return [0.0] * len(completions)\n")
    with pytest.raises(LmforgeError, match="log_metric\\('loss'"):
        api.train(_config(toy, tiny_llama, tmp_path / "run2", grpo={"rewards": ["clash:f", "toy_rewards:say_yes"],
                                                                    "preflight_prompts": 0},
                          train={"max_steps": 1, "eval_strategy": "no"}), progress=False)


def test_reward_functions_by_file_path_and_dotted_name(tmp_path, monkeypatch):
    """Besides module:function: path/to/file.py:function, and package.module.function as other trainers' configs
    name them; a missing file is one line."""
    from lmforge.tasks import rewards
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "my_rw.py").write_text("def short(completions, **kw):\n    return [-len(c) for c in completions]\n")
    (tmp_path / "pkg_rw").mkdir()
    (tmp_path / "pkg_rw" / "__init__.py").write_text("")
    (tmp_path / "pkg_rw" / "fns.py").write_text("def one(completions, **kw):\n    return [1.0] * len(completions)\n")
    opts = rewards.RewardOptions()
    loaded = rewards.load_rewards(["sub/my_rw.py:short", "pkg_rw.fns.one"], None, opts)
    out = rewards.score(loaded, ["p", "p"], ["ab", "abcd"], [[1], [1, 2]], {})
    assert out.tolist() == [[-2.0, 1.0], [-4.0, 1.0]]
    with pytest.raises(LmforgeError, match="no file sub/none.py"):
        rewards.load_rewards(["sub/none.py:short"], None, opts)
