"""Reports as Markdown tables: one judge's report, and two reports side by side. Pure.

``compare_reports`` marks a difference with ``*`` when the two 95% intervals do not overlap: a
conservative test (non-overlap implies a significant difference, not the reverse), stated in the
output so nobody reads more into it.
"""

from __future__ import annotations

from typing import Any

from themis.evaluation import stats
from themis.evaluation.report import AGGREGATED


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_ci(ci: list[float] | None) -> str:
    return f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "n/a"


def render_report(report: dict[str, Any]) -> str:
    """Headline, metrics with intervals, counts, position bias, groups, ceilings, reference effect."""
    judge, bench = report["judge"], report["benchmark"]
    lines = [
        f"# Evaluation: judge `{judge['name']}` ({judge['kind']}) on `{bench['name']}`",
        "",
        f"- items: {bench['items']} from `{bench['source']}` (sha256 `{bench['sha256'][:12]}`)",
        f"- overall (normalised, random = 0, perfect = 1): **{fmt(report['overall']['value'])}**",
        f"- unparsable: {report['policy']['pairwise']}; {report['policy']['pointwise']}",
        "",
    ]
    for family in ("pointwise", "pairwise"):
        if family in report:
            lines += _family(family, report[family])
    if report.get("reference_effect"):
        lines += [
            "## Reference effect",
            "",
            "| scenario/kind | metric | n | with reference | without | effect |",
            "|---|---|---|---|---|---|",
        ]
        for key, row in report["reference_effect"].items():
            lines.append(
                f"| {key} | {row['metric']} | {row['n']} | {fmt(row['with_reference'])} | "
                f"{fmt(row['without_reference'])} | {fmt(row['effect'])} |"
            )
        lines.append("")
    return "\n".join(lines)


def _family(family: str, section: dict[str, Any]) -> list[str]:
    counts = section["counts"]
    summary = f"predictions {counts['predictions']}, parsed {counts['parsed']}, used {counts['used']}"
    if counts["unparsable_by_reason"]:
        summary += "; not parsed: " + ", ".join(f"{k} ({v})" for k, v in counts["unparsable_by_reason"].items())
    lines = [f"## {family}", "", summary]
    lines += ["", "| metric | value | 95% CI | normalised |", "|---|---|---|---|"]
    for name, cell in section.get("metrics", {}).items():
        lines.append(
            f"| {name} | {fmt(cell['value'])} | {fmt_ci(cell['ci'])} | {fmt(section['normalised'].get(name))} |"
        )
    if "position" in section:
        judge, human = section["position"]["judge"], section["position"]["human"]
        lines += ["", "| position | judge | human |", "|---|---|---|"]
        lines += [f"| {k} | {fmt(judge[k])} | {fmt(human[k])} |" for k in judge]
    if section.get("groups"):
        headline = "agr" if family == "pointwise" else "accuracy"
        lines += ["", f"| group | n | {headline} | 95% CI |", "|---|---|---|---|"]
        lines += [
            f"| {g} | {row['n']} | {fmt(row[headline])} | {fmt_ci(row[f'{headline}_ci'])} |"
            for g, row in section["groups"].items()
        ]
    if section.get("human_human"):
        ceiling = section["human_human"]
        lines += [
            "",
            f"Human-human agreement ({ceiling['annotators']} annotators, {ceiling['items']} items): "
            + ", ".join(f"{k} {fmt(v)}" for k, v in ceiling.items() if k not in ("annotators", "items")),
        ]
    return lines + [""]


def compare_reports(a: dict[str, Any], b: dict[str, Any], name_a: str = "A", name_b: str = "B") -> str:
    """Two reports side by side; ``*`` where the intervals do not overlap; the paper's relative gap."""
    lines = [f"# {name_a} vs {name_b}", ""]
    if a["benchmark"]["sha256"] != b["benchmark"]["sha256"]:
        lines += ["**Warning: the two reports were computed on different items.**", ""]
    lines += [f"| metric | {name_a} | 95% CI | {name_b} | 95% CI | difference |", "|---|---|---|---|---|---|"]
    ours: dict[str, float] = {}
    base: dict[str, float] = {}
    for family in ("pointwise", "pairwise"):
        for metric, cell_a in a.get(family, {}).get("metrics", {}).items():
            cell_b = b.get(family, {}).get("metrics", {}).get(metric)
            if cell_b is None:
                continue
            mark = " *" if _separated(cell_a["ci"], cell_b["ci"]) else ""
            diff = None if cell_a["value"] is None or cell_b["value"] is None else cell_a["value"] - cell_b["value"]
            lines.append(
                f"| {family}/{metric} | {fmt(cell_a['value'])} | {fmt_ci(cell_a['ci'])} | "
                f"{fmt(cell_b['value'])} | {fmt_ci(cell_b['ci'])} | {fmt(diff)}{mark} |"
            )
            if metric in AGGREGATED[family] and diff is not None:
                ours[f"{family}/{metric}"], base[f"{family}/{metric}"] = cell_a["value"], cell_b["value"]
    lines += [f"| overall (normalised) | {fmt(a['overall']['value'])} | | {fmt(b['overall']['value'])} | | |", ""]
    if ours:
        gap = stats.relative_gap(ours, base)
        lines.append(
            f"Relative gap of {name_a} over {name_b} (the paper's comparison, mean over {', '.join(ours)}): {gap:+.1%}"
        )
    lines.append("`*`: the two 95% intervals do not overlap (a conservative test of a real difference).")
    return "\n".join(lines)


def _separated(ci_a: list[float] | None, ci_b: list[float] | None) -> bool:
    return bool(ci_a and ci_b and (ci_a[1] < ci_b[0] or ci_b[1] < ci_a[0]))
