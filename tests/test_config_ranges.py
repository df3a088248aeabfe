"""Property test of the config schema: any value outside a numeric key's range, NaN, infinity or an integer
beyond 64 bits is refused, and the error names the key."""

from __future__ import annotations

import math
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.config import Config, Section, TokenizerTrainConfig, build_config
from lmforge.errors import LmforgeError


def _sections() -> list[tuple[tuple[str, ...], type[Section]]]:
    out = []
    for name, f in Config.model_fields.items():
        args = typing.get_args(f.annotation) or (f.annotation,)
        cls = next((a for a in args if isinstance(a, type) and issubclass(a, Section)), None)
        if cls is not None:
            out.append(((name,), cls))
    out.append((("tokenizer", "train"), TokenizerTrainConfig))
    return out


def _is_int(cls, key) -> bool:
    ann = cls.model_fields[key].annotation
    return int in (typing.get_args(ann) or (ann,)) and float not in (typing.get_args(ann) or (ann,))


CASES = [(path, cls, key, rng) for path, cls in _sections() for key, rng in cls.RANGES.items()]


def _outside(rng, as_int: bool):
    parts = []
    if rng.lo is not None:
        if as_int:
            top = int(rng.lo) if rng.lo_open else int(math.ceil(rng.lo)) - 1
            parts.append(st.integers(min_value=-(2**63), max_value=top))
        else:
            parts.append(st.floats(max_value=rng.lo, exclude_max=not rng.lo_open, allow_nan=False, allow_infinity=False))
    if rng.hi is not None:
        if as_int:
            bottom = int(rng.hi) if rng.hi_open else int(math.floor(rng.hi)) + 1
            parts.append(st.integers(min_value=bottom, max_value=2**63 - 1))
        else:
            parts.append(st.floats(min_value=rng.hi, exclude_min=not rng.hi_open, allow_nan=False, allow_infinity=False))
    if as_int:
        parts.append(st.sampled_from([2**64, -(2**70)]))  # beyond 64 bits
    else:
        parts.append(st.sampled_from([math.nan, math.inf, -math.inf]))
    return st.one_of(*parts)


def _raw(path: tuple[str, ...], key: str, value) -> dict:
    raw: dict = {key: value}
    for part in reversed(path):
        raw = {part: raw}
    return raw


def test_every_section_has_ranges_for_its_numbers():
    assert len(CASES) >= 40
    for path, cls in _sections():
        for key, f in cls.model_fields.items():
            args = typing.get_args(f.annotation) or (f.annotation,)
            if (int in args or float in args) and bool not in args and key not in ("simpo_gamma",):
                assert key in cls.RANGES, f"{'.'.join(path)}.{key} has no range"


@pytest.mark.parametrize("path,cls,key,rng", CASES, ids=[f"{'.'.join(c[0])}.{c[2]}" for c in CASES])
def test_values_outside_a_range_are_refused_with_the_key_named(path, cls, key, rng):
    as_int = _is_int(cls, key)

    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_outside(rng, as_int))
    def check(value):
        with pytest.raises(LmforgeError) as err:
            build_config(_raw(path, key, value))
        assert f"'{'.'.join(path)}.{key}'" in err.value.message, err.value.message
    check()
    # and a value inside the range is accepted (the range is not empty)
    inside = rng.lo + (1 if rng.lo_open else 0) if rng.lo is not None else (rng.hi - 1 if rng.hi is not None else 0)
    if rng.hi is not None and not rng.contains(inside):
        inside = (rng.lo + rng.hi) / 2
    build_config(_raw(path, key, int(inside) if as_int else float(inside)))
