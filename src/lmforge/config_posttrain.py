"""The config sections of post-training beyond preference tuning: online RL (`grpo`), reward models (`reward`) and
distillation (`distill`)."""

from __future__ import annotations

from typing import Literal, Optional, Union

from .config_ranges import AT_LEAST_1, NON_NEGATIVE, POSITIVE, Range, Section


class GrpoConfig(Section):
    RANGES = {"num_generations": Range(2), "max_completion_length": AT_LEAST_1, "max_prompt_length": AT_LEAST_1,
              "temperature": Range(0, lo_open=True), "top_p": Range(0, 1, lo_open=True), "top_k": AT_LEAST_1,
              "epsilon": Range(0, 1, lo_open=True), "epsilon_high": POSITIVE, "num_iterations": AT_LEAST_1,
              "beta": NON_NEGATIVE, "number_tolerance": NON_NEGATIVE, "length_buffer": AT_LEAST_1,
              "preflight_prompts": NON_NEGATIVE, "eval_k": NON_NEGATIVE, "sample_prompts": NON_NEGATIVE}
    rewards: list[str] = ["exact_match"]
    """grpo: reward functions: built-ins (exact_match, contains, number_match, format, length_penalty) or module:function, called as TRL calls them (prompts, completions, completion_ids, every data column) -> one float or None per completion."""
    reward_weights: Optional[list[float]] = None
    """grpo: one weight per reward function (default 1 each), then one for reward_model when set; the reward is their weighted sum."""
    reward_model: Optional[str] = None
    """grpo: a reward model (a task: reward run or model folder) whose score is one more reward, computed in batches without gradients; each prompt + completion is rendered with the reward model's own chat template."""
    answer_column: str = "answer"
    """grpo: the column with the reference answer that exact_match, contains and number_match compare with."""
    number_tolerance: float = 1e-6
    """grpo: number_match: |got - answer| <= tolerance x max(1, |answer|)."""
    format_pattern: Optional[str] = None
    """grpo: the regular expression the format reward searches for in a completion."""
    length_buffer: int = 16
    """grpo: length_penalty: 0 up to max_completion_length - length_buffer tokens, then linearly down to -1 at the limit."""
    num_generations: int = 8
    """grpo: completions sampled per prompt (the group whose rewards are compared)."""
    max_completion_length: int = 64
    """grpo: tokens a completion may have; one that reaches it without an end-of-sequence token is truncated."""
    max_prompt_length: Optional[int] = None
    """grpo: a prompt keeps its last this-many tokens. Default: data.block_size - max_completion_length."""
    temperature: float = 1.0
    """grpo: sampling temperature of the rollouts (log-probs are taken at the same temperature)."""
    top_p: float = 1.0
    """grpo: nucleus sampling of the rollouts: keep the most likely tokens up to this probability mass."""
    top_k: Optional[int] = None
    """grpo: sample the rollouts among the k most likely tokens only."""
    advantage: Literal["group", "rloo"] = "group"
    """grpo: the baseline a reward is compared with: its group's mean (GRPO) or the mean of the other completions of the group (RLOO's leave-one-out)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """grpo: divide advantages by the group's reward std (GRPO), the whole batch's (more robust), or not at all (Dr. GRPO; classic RLOO)."""
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "dapo"
    """grpo: how token losses are averaged: per sequence then over sequences (grpo), over the micro-batch's tokens (bnpo), over sequences x max_completion_length (dr_grpo), over the whole step's tokens (dapo)."""
    importance_sampling_level: Literal["token", "sequence"] = "token"
    """grpo: the importance ratio per token, or one per completion (GSPO; use with loss_type grpo)."""
    epsilon: float = 0.2
    """grpo: PPO clipping: the ratio is kept within [1 - epsilon, 1 + epsilon_high]."""
    epsilon_high: Optional[float] = None
    """grpo: the upper clip (DAPO's clip-higher uses 0.28); default: epsilon."""
    num_iterations: int = 1
    """grpo: optimizer steps on each batch of rollouts (the old log-probs are kept; 1 skips that extra pass)."""
    beta: float = 0.0
    """grpo: weight of the KL penalty against the starting model (with LoRA: the adapters switched off, no copy)."""
    mask_truncated_completions: bool = False
    """grpo: completions cut at max_completion_length get no loss (DAPO's overlong filtering)."""
    share_prefill: bool = True
    """grpo: run a prompt's forward pass once for its whole group and repeat its KV cache, in sampling and in the training pass (its gradients summed over the group); off: once per sample."""
    preflight_prompts: int = 16
    """grpo: before step 1, sample a group for this many train prompts; a run where every group has equal rewards (nothing to learn) stops there. 0: skip."""
    eval_k: int = 0
    """grpo: evaluations also sample k completions per prompt for pass@k (0: greedy pass@1 only; lmforge eval uses num_generations)."""
    sample_prompts: int = 3
    """grpo: eval prompts whose sampled group and rewards are logged at each evaluation."""


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
