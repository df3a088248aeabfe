"""The config sections of reward models (`reward`) and distillation (`distill`)."""

from __future__ import annotations

from typing import Optional

from .config_ranges import NON_NEGATIVE, Section


class RewardConfig(Section):
    RANGES = {"center_rewards_coefficient": NON_NEGATIVE}
    center_rewards_coefficient: Optional[float] = None
    """reward: add this x (r_chosen + r_rejected)^2 to the loss, so rewards centre on 0 (TRL's center_rewards_coefficient; 0.01 is usual). Default: off."""
