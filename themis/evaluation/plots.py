"""PNG plots of a report, with matplotlib's non-interactive backend. Pure: no Ray or torch.

Per judgment family: the confusion matrix (human rows, judge columns), per-group horizontal bars of
the headline metric with their bootstrap intervals (sorted, readable at 60 groups), and the judge's
verdict distribution beside the humans'.
"""

from __future__ import annotations

import io
from typing import Any

GROUP_PLOT_WIDTH = 7.0  # inches: 700 px at the 100 dpi the PNGs are saved with


def render_plots(report: dict[str, Any]) -> dict[str, bytes]:
    """Plot name -> PNG bytes, for every family the report holds."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    out = {}
    for family, headline in (("pointwise", "agr"), ("pairwise", "accuracy")):
        section = report.get(family)
        if not section or not section.get("metrics"):
            continue
        out[f"{family}_groups"] = _groups(section["groups"], headline, family)
        # Scores on several scales: a confusion matrix and distributions per scale.
        for name, part in [(family, section)] if "confusion" in section else _by_scale(section):
            out[f"{name}_confusion"] = _confusion(part["confusion"], name)
            out[f"{name}_distribution"] = _distribution(part, family)
    return out


def _by_scale(section: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"pointwise_{scale}", part) for scale, part in section.get("by_scale", {}).items() if part["n"]]


def _confusion(confusion: dict[str, Any], family: str) -> bytes:
    import matplotlib.pyplot as plt

    rows = confusion["labels"]
    cols = confusion.get("predicted", rows)
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(cols), 1.2 + 0.8 * len(rows)))
    ax.imshow(confusion["matrix"], cmap="Blues")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.set_xlabel("judge")
    ax.set_ylabel("human")
    for i, row in enumerate(confusion["matrix"]):
        for j, n in enumerate(row):
            ax.text(j, i, str(n), ha="center", va="center", fontsize=8)
    ax.set_title(f"{family}: confusion")
    return _png(fig)


def _groups(groups: dict[str, Any], headline: str, family: str) -> bytes:
    """Horizontal bars, sorted by value, one row per group: the figure keeps its width and grows
    down with the groups, so 60 of them stay readable (a vertical strip would be metres wide)."""
    import matplotlib.pyplot as plt

    names = sorted(groups, key=lambda g: (groups[g][headline] or 0.0, g))
    values = [groups[g][headline] or 0.0 for g in names]
    cis = [groups[g][f"{headline}_ci"] or [v, v] for g, v in zip(names, values)]
    errors = [[v - ci[0] for v, ci in zip(values, cis)], [ci[1] - v for v, ci in zip(values, cis)]]
    labels = [f"{_short(g)} (n={groups[g]['n']})" for g in names]
    fig, ax = plt.subplots(figsize=(GROUP_PLOT_WIDTH, 1.3 + 0.25 * len(names)))
    ax.barh(range(len(names)), values, xerr=errors, capsize=2, color="tab:blue")
    ax.set_yticks(range(len(names)), labels, fontsize=7)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_xlabel(f"{headline} (95% CI)")
    ax.set_title(f"{family}: {headline} per group")
    return _png(fig)


def _short(name: str, most: int = 40) -> str:
    return name if len(name) <= most else name[: most - 1] + "…"


def _distribution(section: dict[str, Any], family: str) -> bytes:
    import matplotlib.pyplot as plt

    if family == "pointwise":
        judge, human = section["distribution"]["judge"], section["distribution"]["human"]
    else:  # verdict counts from the confusion matrix: column sums (judge) and row sums (human)
        matrix, labels = section["confusion"]["matrix"], section["confusion"]["labels"]
        judge = {c: sum(row[j] for row in matrix) for j, c in enumerate(section["confusion"]["predicted"])}
        human = {r: sum(matrix[i]) for i, r in enumerate(labels)}
    keys = list(dict.fromkeys([*human, *judge]))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = range(len(keys))
    ax.bar([x - 0.2 for x in xs], [human.get(k, 0) for k in keys], width=0.4, label="human")
    ax.bar([x + 0.2 for x in xs], [judge.get(k, 0) for k in keys], width=0.4, label="judge")
    ax.set_xticks(list(xs), keys)
    ax.legend()
    ax.set_title(f"{family}: judge vs human distribution")
    return _png(fig)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
