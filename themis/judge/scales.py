"""Score scales: the paper's 1-5 tiers and the other scales custom-prompt augmentation trains on.

A scale is a closed integer range with a tier description per value (the prompt's scale block).
Teacher scores are always 1-5; ``convert_score`` maps them onto another scale by one stated rule:
map linearly (1 -> low, 5 -> high) and round half up. So 1-10 gets 1, 3, 6, 8, 10; 1-3 gets
1, 2, 2, 3, 3; and 0-1 gets 0, 0, 1, 1, 1 (3, "strengths outweigh weaknesses", is usable).
``normalise`` puts any scale on 0-1, for metrics aggregated across scales. Pure: no Ray, torch
or DeepSpeed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_SCALE = "1-5"
TEACHER_SCALE = "1-5"  # what every teacher judgment is scored on


@dataclass(frozen=True)
class Scale:
    name: str
    low: int
    high: int
    tiers: tuple[str, ...]  # what each value means, low to high

    @property
    def values(self) -> tuple[int, ...]:
        return tuple(range(self.low, self.high + 1))

    @property
    def choices(self) -> tuple[str, ...]:
        """The verdict tokens a judge may write inside ``[[ ]]``."""
        return tuple(str(v) for v in self.values)

    @property
    def width(self) -> int:
        return self.high - self.low

    def contains(self, value: float) -> bool:
        return float(value).is_integer() and self.low <= value <= self.high

    def normalise(self, value: float) -> float:
        """``value`` on 0-1 (low -> 0, high -> 1), so errors on different scales can be averaged."""
        return (value - self.low) / self.width


SCALES: dict[str, Scale] = {
    "1-5": Scale(
        "1-5",
        1,
        5,
        (
            "severe flaws: the response fails the user or is wrong, unsafe or off-topic.",
            "partly usable: some value, but major problems remain.",
            "strengths outweigh weaknesses: usable with clear room to improve.",
            "acceptable with only minor issues.",
            "excellent: meets every important criterion.",
        ),
    ),
    "0-1": Scale(
        "0-1",
        0,
        1,
        (
            "not usable: severe flaws or major problems remain.",
            "usable: its strengths outweigh its weaknesses.",
        ),
    ),
    "1-3": Scale(
        "1-3",
        1,
        3,
        (
            "poor: severe flaws, or only partly usable.",
            "fair: usable, strengths outweigh weaknesses, with clear room to improve.",
            "good: acceptable with at most minor issues, or excellent.",
        ),
    ),
    "1-10": Scale(
        "1-10",
        1,
        10,
        (
            "fails the user entirely: wrong, unsafe or off-topic.",
            "severe flaws with a trace of value.",
            "partly usable, but major problems dominate.",
            "partly usable, major problems remain.",
            "usable at a stretch: strengths barely outweigh weaknesses.",
            "usable: strengths outweigh weaknesses, with clear room to improve.",
            "good, with a few notable issues.",
            "acceptable with only minor issues.",
            "very good: nearly every important criterion met.",
            "excellent: meets every important criterion.",
        ),
    ),
}


def get_scale(name: str | None) -> Scale:
    """A scale by name (``None`` is the default 1-5); a clear error lists the known ones."""
    key = name or DEFAULT_SCALE
    if key not in SCALES:
        raise ValueError(f"unknown scale {key!r}; known: {', '.join(SCALES)}")
    return SCALES[key]


def convert_score(score: int, scale: str) -> int:
    """A teacher's 1-5 score on ``scale``: linear map, rounded half up (the module doc's rule)."""
    source, target = SCALES[TEACHER_SCALE], get_scale(scale)
    if not source.contains(score):
        raise ValueError(f"teacher score must be an integer 1-5, got {score!r}")
    exact = target.low + (score - source.low) * target.width / source.width
    return int(math.floor(exact + 0.5))


def render_scale(scale: str | None) -> str:
    """The prompt's scale block: one line per value."""
    s = get_scale(scale)
    lines = [f"{v} = {tier}" for v, tier in zip(s.values, s.tiers, strict=True)]
    return "[Scale Begin]\n" + "\n".join(lines) + "\n[Scale End]"
