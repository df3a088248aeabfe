"""The config sections of reward models (`reward`) and distillation (`distill`)."""

from __future__ import annotations

from typing import Literal, Optional, Union

from .config_ranges import AT_LEAST_1, NON_NEGATIVE, POSITIVE, Range, Section


class RewardConfig(Section):
    RANGES = {"center_rewards_coefficient": NON_NEGATIVE}
    center_rewards_coefficient: Optional[float] = None
    """reward: add this x (r_chosen + r_rejected)^2 to the loss, so rewards centre on 0 (TRL's center_rewards_coefficient; 0.01 is usual). Default: off."""


class FromTeacher(Section):
    layers: Union[Literal["every_other"], list[int]] = "every_other"
    """distill: the teacher's layers the student keeps: every_other (0, 2, 4, ...: DistilBERT's choice) or a list of indices."""


class StudentSpec(Section):
    from_teacher: FromTeacher = FromTeacher()
    """distill: build the student from a subset of the teacher's layers (embeddings, final norm and head copied)."""


class DistillConfig(Section):
    RANGES = {"beta": Range(0, 1), "temperature": POSITIVE, "alpha": Range(0, 1), "top_k": AT_LEAST_1,
              "lmbda": Range(0, 1), "max_new_tokens": AT_LEAST_1}
    teacher: Optional[str] = None
    """distill: the teacher: a built-in model name, a folder or a run."""
    student: Optional[StudentSpec] = None
    """distill: {from_teacher: {layers: every_other}} builds the student from the teacher's layers; absent: the student is model.name."""
    loss: Literal["forward_kl", "reverse_kl", "gjsd"] = "forward_kl"
    """distill: KL(teacher || student), KL(student || teacher), or the generalized JSD with beta (0 = forward_kl, 1 = reverse_kl)."""
    beta: float = 0.5
    """distill: the generalized JSD's interpolation (loss: gjsd)."""
    temperature: float = 1.0
    """distill: both distributions are softened by this temperature (logits / T); also the on-policy sampling temperature."""
    alpha: float = 1.0
    """distill: weight of the distillation term; 1 - alpha goes to next-token cross-entropy (0 = plain training: the control run)."""
    top_k: Optional[int] = None
    """distill: compare the distributions over the teacher's k most likely tokens only (renormalised); default: the whole vocabulary."""
    cache: bool = False
    """distill: compute the teacher's top-k log-probs once before training and keep them on disk (needs top_k; the size is logged)."""
    lmbda: float = 0.0
    """distill: share of batches made on-policy (GKD): the student's own sampled continuations, scored by the teacher."""
    max_new_tokens: int = 64
    """distill: tokens the student samples for an on-policy batch."""
