"""lmforge's preference losses against TRL's own code (TRL 1.16: DPOTrainer._compute_loss for DPO and IPO,
CPOTrainer.cpo_loss for SimPO, ORPOTrainer.odds_ratio_loss for ORPO), on the same log-probabilities. Runs
when TRL is installed (`pip install lmforge[bench]`; CI installs it); skipped otherwise.

TRL's trainers compute the loss from a forward pass: here a stand-in model returns per-token log-probs whose
sums are the pairs' log-probs, and a stand-in trainer carries the attributes the method reads, so TRL's code
itself runs. The conventions that differ on purpose are asserted as differences (README, preference tuning).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from lmforge.tasks.preference_loss import preference_loss

trl = pytest.importorskip("trl")

# per pair: summed log-probs of the chosen / rejected replies (policy, reference) and their token counts
PC = torch.tensor([-12.5, -30.0, -4.25, -50.0], dtype=torch.float64)
PR = torch.tensor([-14.0, -22.5, -4.0, -61.0], dtype=torch.float64)
RC = torch.tensor([-13.0, -29.0, -5.0, -49.5], dtype=torch.float64)
RR = torch.tensor([-13.5, -23.0, -4.5, -60.0], dtype=torch.float64)
NC = torch.tensor([5, 12, 2, 20])
NR = torch.tensor([6, 9, 3, 25])


class _Accelerator:
    device = torch.device("cpu")

    def gather_for_metrics(self, x):
        return x

    def gather(self, x):
        return x

    def unwrap_model(self, m):
        return m


def _per_token(total: torch.Tensor, n: torch.Tensor, width: int) -> torch.Tensor:
    """[pairs, width] log-probs: each row's first n tokens share its total, the rest 0 (not completion)."""
    out = torch.zeros(len(total), width, dtype=torch.float64)
    for i, (t, k) in enumerate(zip(total.tolist(), n.tolist())):
        out[i, :k] = t / k
    return out


def _trl_dpo(loss_type: str, beta: float, pc=PC, pr=PR, rc=RC, rr=RR, nc=NC, nr=NR):
    """(loss mean, the trainer's logged metrics) from TRL's DPOTrainer._compute_loss on these log-probs."""
    from trl import DPOTrainer
    PC, PR, RC, RR, NC, NR = pc, pr, rc, rr, nc, nr  # noqa: N806 - the module's names, for these pairs
    width = int(max(NC.max(), NR.max())) + 1
    per_token = torch.cat([_per_token(PC, NC, width), _per_token(PR, NR, width)])  # batch is [chosen, rejected]
    n = 2 * len(PC)
    completion = torch.zeros(n, width + 1, dtype=torch.long)  # a prompt position first, then the completions
    for i, k in enumerate(NC.tolist() + NR.tolist()):
        completion[i, 1:k + 1] = 1
    zeros = torch.zeros_like(per_token)

    def model(**kwargs):
        return SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros,
                               is_top1=torch.zeros_like(per_token, dtype=torch.bool))
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=_Accelerator(), aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0],
        beta=beta, label_smoothing=0.0, use_weighting=False, _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0, _tp_size=1, args=SimpleNamespace(gradient_checkpointing_kwargs=None))
    inputs = {"input_ids": torch.zeros(n, width + 1, dtype=torch.long), "attention_mask": torch.ones(n, width + 1),
              "completion_mask": completion, "ref_chosen_logps": RC, "ref_rejected_logps": RR}
    loss = DPOTrainer._compute_loss(trainer, model, inputs, False)
    return float(loss), {k: v[-1] for k, v in trainer._metrics["train"].items()}


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_sigmoid_equals_trl(beta):
    ours, c, r = preference_loss("sigmoid", beta, PC, PR, NC, NR, RC, RR)
    theirs, m = _trl_dpo("sigmoid", beta)
    assert float(ours.mean()) == pytest.approx(theirs, rel=1e-12)
    assert float(c.mean()) == pytest.approx(m["rewards/chosen"], rel=1e-12)
    assert float(r.mean()) == pytest.approx(m["rewards/rejected"], rel=1e-12)
    assert float((c > r).double().mean()) == m["rewards/accuracies"]
    # label smoothing: lmforge's sigmoid loss is conservative DPO with it; TRL 1.16's sigmoid ignores it
    smoothed, _, _ = preference_loss("sigmoid", beta, PC, PR, NC, NR, RC, RR, label_smoothing=0.2)
    assert float(smoothed.mean()) != pytest.approx(theirs, rel=1e-6)


def test_ipo_equals_trl_and_reward_scale_sum_gives_trls_rewards():
    beta = 0.3
    ours, c_mean, _ = preference_loss("ipo", beta, PC, PR, NC, NR, RC, RR)
    theirs, m = _trl_dpo("ipo", beta)
    assert float(ours.mean()) == pytest.approx(theirs, rel=1e-12)  # the same length-averaged loss
    assert float(c_mean.mean()) != pytest.approx(m["rewards/chosen"], rel=1e-3)  # per-token mean vs TRL's sum
    same, c, r = preference_loss("ipo", beta, PC, PR, NC, NR, RC, RR, reward_scale="sum")
    assert float(same.mean()) == pytest.approx(theirs, rel=1e-12)
    assert float(c.mean()) == pytest.approx(m["rewards/chosen"], rel=1e-12)
    assert float(r.mean()) == pytest.approx(m["rewards/rejected"], rel=1e-12)
    assert float((c > r).double().mean()) == m["rewards/accuracies"]


def test_simpo_equals_trls_cpo_with_simpo_loss_and_cpo_alpha_0():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.cpo import CPOTrainer
    beta, gamma = 2.0, 0.7
    trainer = SimpleNamespace(alpha=0.0, accelerator=_Accelerator(), loss_type="simpo", simpo_gamma=gamma, beta=beta,
                              label_smoothing=0.0)
    # TRL's CPO trainer passes length-averaged log-probs for SimPO (and adds cpo_alpha x NLL: 0 here)
    losses, c, r = CPOTrainer.cpo_loss(trainer, PC / NC, PR / NR)
    ours, oc, orr = preference_loss("simpo", beta, PC, PR, NC, NR, simpo_gamma=gamma)
    assert torch.allclose(ours, losses, rtol=1e-12) and torch.allclose(oc, c) and torch.allclose(orr, r)


def test_orpo_odds_ratio_term_equals_trls():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.orpo import ORPOTrainer
    beta = 0.1
    trainer = SimpleNamespace(beta=beta, accelerator=_Accelerator())
    ratio_losses, c, r, _, _ = ORPOTrainer.odds_ratio_loss(trainer, PC / NC, PR / NR)
    ours, oc, orr = preference_loss("orpo", beta, PC, PR, NC, NR)
    # lmforge: per pair, the chosen reply's mean-token NLL minus beta x log s(log odds); TRL subtracts the same
    # odds-ratio term from an NLL that is token-weighted over the batch and includes the prompt (README table)
    assert torch.allclose(ours - (-(PC / NC)), -ratio_losses.double(), rtol=1e-10)
    assert torch.allclose(oc, c.double()) and torch.allclose(orr, r.double())
