"""The base of every config section: each number finite and within 64 bits, and within its key's range.

    class TrainConfig(Section):
        RANGES = {"learning_rate": Range(0, 10, lo_open=True), "seed": SEED}

A value outside is refused by pydantic with the key in the error's location, so `lmforge` names the key
(`bad value for 'train.seed' ...: must be >= 0 and <= 4294967295`). tests/test_config_ranges.py feeds every
ranged key values outside its range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

from pydantic import BaseModel, ConfigDict, field_validator

INT64 = 2**63
SEED_MAX = 2**32 - 1  # numpy's legacy seeding (used by accelerate's set_seed) takes 32 bits


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric key: lo <= value <= hi, or strict with lo_open / hi_open."""
    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, v: float) -> bool:
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return not (self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi))

    def text(self) -> str:
        def num(x: float) -> str:
            return str(int(x)) if float(x).is_integer() else f"{x:g}"
        lo = "" if self.lo is None else f"{'>' if self.lo_open else '>='} {num(self.lo)}"
        hi = "" if self.hi is None else f"{'<' if self.hi_open else '<='} {num(self.hi)}"
        return " and ".join(x for x in (lo, hi) if x)


POSITIVE = Range(0, lo_open=True)
AT_LEAST_1 = Range(1)
NON_NEGATIVE = Range(0)
SHARE = Range(0, 1, hi_open=True)  # a probability or share in [0, 1)
SEED = Range(0, SEED_MAX)


class Section(BaseModel):
    """A config section. Every number is finite and within 64 bits; keys listed in RANGES are also checked
    against their range (a property test feeds each one values outside it)."""
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)
    RANGES: ClassVar[dict[str, Range]] = {}

    @field_validator("*", mode="after")
    @classmethod
    def _in_range(cls, value, info):
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value}")
        if isinstance(value, int) and not -INT64 <= value < INT64:
            raise ValueError(f"must fit in 64 bits, got {value}")
        rng = cls.RANGES.get(info.field_name)
        if rng is not None and isinstance(value, (int, float)) and not rng.contains(value):
            raise ValueError(f"must be {rng.text()}, got {value}")
        return value
