"""Selecting training records by IFD, and the scenario mix. Pure: no Ray or torch.

Records are judgment rows (as the dataset stage holds them) carrying an ``ifd`` (None when not
scored). A pair's two orders are one *unit*: selected or dropped together, so the swapped copy
that teaches position robustness is never lost; a unit's IFD is the mean of its records'.

Every function returns what it keeps and what it drops, each dropped row tagged with a ``reason``,
so the dataset stage can prove rows in = rows kept + rows rejected at every step.
"""

from __future__ import annotations

import io
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from themis.config import ScenarioMix
from themis.curation.filters import balance_key, reject

Row = dict[str, Any]

OUTLIER = "ifd: outlier within its scenario"
UNDEFINED = "ifd: undefined (s(A) = 0)"
NOT_SELECTED = "selection: not among the selected"
OVER_MIX = "scenario mix: over its scenario's share"


@dataclass(frozen=True)
class Unit:
    """One record, or a pair's records in both orders."""

    rows: tuple[Row, ...]

    @property
    def scenario(self) -> str:
        return self.rows[0]["scenario"]

    @property
    def label(self) -> str:
        """The balancing class of the unit: ``score:4`` or ``pairwise:A`` (the winner in ab order)."""
        return ":".join(balance_key(self.rows[0]))

    @property
    def ifd(self) -> float | None:
        values = [v for v in (r.get("ifd") for r in self.rows) if v is not None]
        return math.fsum(values) / len(values) if len(values) == len(self.rows) else None

    @property
    def scored_ifd(self) -> float:
        """``ifd``, for the rules that rank by it; ValueError for a unit the IFD scoring left out."""
        ifd = self.ifd
        if ifd is None:
            raise ValueError(f"unit {self.key} has no IFD score: rank only what drop_undefined keeps")
        return ifd

    @property
    def key(self) -> str:
        return self.rows[0]["judgment_id"]

    def __len__(self) -> int:
        return len(self.rows)


def group_units(rows: list[Row]) -> list[Unit]:
    """Rows as units, in the order they came: a pairwise row joins the other rows of its pair."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        key = f"pair:{row['pair_id']}" if row["kind"] == "pairwise" and row["pair_id"] else f"row:{row['judgment_id']}"
        groups.setdefault(key, []).append(row)
    return [Unit(tuple(members)) for members in groups.values()]


def flatten(units: list[Unit]) -> list[Row]:
    return [row for unit in units for row in unit.rows]


def drop_undefined(units: list[Unit]) -> tuple[list[Unit], list[Row]]:
    """Units whose IFD could not be formed (s(A) = 0) cannot be ranked: dropped with the reason."""
    kept = [u for u in units if u.ifd is not None]
    return kept, reject(flatten([u for u in units if u.ifd is None]), UNDEFINED)


def z_scores(values: list[float]) -> list[float]:
    """Population z-scores; all 0 when the values do not vary (or there is only one)."""
    mean = math.fsum(values) / len(values)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
    return [(v - mean) / std if std > 0 else 0.0 for v in values]


def drop_outliers(units: list[Unit], threshold: float) -> tuple[list[Unit], list[Row]]:
    """Drop units whose IFD is more than ``threshold`` standard deviations from the mean of their
    scenario (both sides: an IFD far above is noise the prompt cannot explain, far below is a
    judgment the prompt gives away)."""
    by_scenario: dict[str, list[Unit]] = defaultdict(list)
    for unit in units:
        by_scenario[unit.scenario].append(unit)
    outliers: set[str] = set()
    for members in by_scenario.values():
        for unit, z in zip(members, z_scores([u.scored_ifd for u in members])):
            if abs(z) > threshold:
                outliers.add(unit.key)
    kept = [u for u in units if u.key not in outliers]
    return kept, reject(flatten([u for u in units if u.key in outliers]), OUTLIER)


def by_ifd(units: list[Unit]) -> list[Unit]:
    """Highest IFD first; ties by key, so the order is the same on every run."""
    return sorted(units, key=lambda u: (-u.scored_ifd, u.key))


def take(ordered: list[Unit], target: int) -> tuple[list[Unit], list[Unit]]:
    """Units in order while they fit in ``target`` records (a pair that would overshoot is
    skipped, and a later single may still fit)."""
    chosen, rest, size = [], [], 0
    for unit in ordered:
        if size + len(unit) <= target:
            chosen.append(unit)
            size += len(unit)
        else:
            rest.append(unit)
    return chosen, rest


def select_highest_ifd(units: list[Unit], target: int) -> tuple[list[Unit], list[Unit]]:
    """The paper's rule: the ``target`` records of highest IFD."""
    return take(by_ifd(units), target)


def select_random(units: list[Unit], target: int, seed: int) -> tuple[list[Unit], list[Unit]]:
    """The baseline: ``target`` records drawn at random (seeded), IFD unused."""
    order = sorted(units, key=lambda u: u.key)
    random.Random(seed).shuffle(order)
    return take(order, target)


def stratum_quotas(sizes: dict[str, int], target: int) -> dict[str, int]:
    """Records per stratum in proportion to its size, summing to ``min(target, total)`` (largest
    remainder, ties by stratum name)."""
    total = sum(sizes.values())
    target = min(target, total)
    exact = {k: target * n / total for k, n in sizes.items()}
    quotas = {k: math.floor(v) for k, v in exact.items()}
    leftover = target - sum(quotas.values())
    for k in sorted(exact, key=lambda k: (quotas[k] - exact[k], k))[:leftover]:
        quotas[k] += 1
    return quotas


def select_stratified(units: list[Unit], target: int) -> tuple[list[Unit], list[Unit]]:
    """``target`` records spread over (scenario, label) strata in proportion to the pool, the
    highest IFD within each stratum, so selection keeps the balance of scenarios and verdicts."""
    strata: dict[str, list[Unit]] = defaultdict(list)
    for unit in units:
        strata[f"{unit.scenario}/{unit.label}"].append(unit)
    quotas = stratum_quotas({k: sum(map(len, v)) for k, v in strata.items()}, target)
    chosen, rest = [], []
    for name in sorted(strata):
        picked, left = take(by_ifd(strata[name]), quotas[name])
        chosen += picked
        rest += left
    return chosen, rest


def select(units: list[Unit], strategy: str, target: int | None, seed: int) -> tuple[list[Unit], list[Row]]:
    """Apply a selection strategy; the units not chosen come back as rejects."""
    if strategy == "all" or target is None:
        return units, []
    if strategy == "highest_ifd":
        chosen, rest = select_highest_ifd(units, target)
    elif strategy == "stratified":
        chosen, rest = select_stratified(units, target)
    elif strategy == "random":
        chosen, rest = select_random(units, target, seed)
    else:
        raise ValueError(f"unknown selection strategy {strategy!r}")
    return chosen, reject(flatten(rest), f"{NOT_SELECTED} ({strategy}, target {target})")


# --- the scenario mix ---------------------------------------------------------------------------


def mix_quotas(sizes: dict[str, int], mix: ScenarioMix) -> dict[str, int]:
    """Records each scenario may keep. Weights: the largest split whose scenarios all meet their
    share (the scarcest scenario, relative to its weight, decides). Quotas: as given, else all."""
    if mix.quotas is not None:
        return {s: min(n, mix.quotas.get(s, n)) for s, n in sizes.items()}
    weights = {s: (mix.weights or {}).get(s, 0.0) for s in sizes}
    total_weight = math.fsum(weights.values())
    if total_weight == 0:
        return {s: 0 for s in sizes}
    shares = {s: w / total_weight for s, w in weights.items()}
    size = min(sizes[s] / share for s, share in shares.items() if share > 0)
    return {s: min(sizes[s], math.floor(size * share + 1e-9)) for s, share in shares.items()}


def apply_mix(units: list[Unit], mix: ScenarioMix, seed: int) -> tuple[list[Unit], list[Row]]:
    """Trim each scenario to its quota: highest IFD first where scored, else a seeded draw."""
    by_scenario: dict[str, list[Unit]] = defaultdict(list)
    for unit in units:
        by_scenario[unit.scenario].append(unit)
    quotas = mix_quotas({s: sum(map(len, us)) for s, us in by_scenario.items()}, mix)
    kept, dropped = [], []
    for scenario in sorted(by_scenario):
        members = by_scenario[scenario]
        if all(u.ifd is not None for u in members):
            order = by_ifd(members)
        else:
            order = sorted(members, key=lambda u: u.key)
            random.Random(seed).shuffle(order)
        chosen, rest = take(order, quotas[scenario])
        kept += chosen
        dropped += rest
    return kept, reject(flatten(dropped), OVER_MIX)


# --- the report -----------------------------------------------------------------------------------


def distribution(values: list[float]) -> dict[str, float | int]:
    """Count, mean, standard deviation and quantiles of some IFDs."""
    ordered = sorted(values)
    n = len(ordered)
    mean = math.fsum(ordered) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in ordered) / n)
    out: dict[str, float | int] = {"n": n, "mean": round(mean, 4), "std": round(std, 4), "min": round(ordered[0], 4)}
    for name, q in (("p10", 0.1), ("p25", 0.25), ("median", 0.5), ("p75", 0.75), ("p90", 0.9)):
        out[name] = round(_quantile(ordered, q), 4)
    out["max"] = round(ordered[-1], 4)
    return out


def _quantile(ordered: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def ifd_by_scenario(rows: list[Row]) -> dict[str, list[float]]:
    """The scored IFDs of the rows, per scenario."""
    out: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if row.get("ifd") is not None:
            out[row["scenario"]].append(row["ifd"])
    return dict(sorted(out.items()))


def counts_by_scenario_label(rows: list[Row]) -> dict[str, dict[str, int]]:
    """Records per scenario and label (``score:4``, ``pairwise:A`` in ab order)."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for row in rows:
        out[row["scenario"]][":".join(balance_key(row))] += 1
    return {s: dict(sorted(c.items())) for s, c in sorted(out.items())}


def render_ifd_plot(values: dict[str, list[float]], selected: dict[str, list[float]]) -> bytes:
    """PNG: per scenario, a box plot of every scored IFD with the selected records' IFDs as dots."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    names = list(values)
    fig, ax = plt.subplots(figsize=(7.0, 1.3 + 0.45 * len(names)))
    ax.boxplot([values[n] for n in names], orientation="horizontal", showfliers=True)
    for i, name in enumerate(names, 1):
        picked = selected.get(name, [])
        ax.scatter(picked, [i + 0.25] * len(picked), s=8, color="tab:orange", label="selected" if i == 1 else None)
    ax.set_yticks(range(1, len(names) + 1), [f"{n} (n={len(values[n])})" for n in names])
    ax.set_xlabel("IFD = s(A|Q) / s(A)")
    ax.set_title("IFD per scenario (box: all scored; dots: selected)")
    if any(selected.values()):
        ax.legend(loc="lower right", fontsize=8)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
