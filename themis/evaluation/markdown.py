"""Reports as Markdown tables: one judge's report, a suite report, and two of either side by side. Pure.

``compare_reports`` marks a difference with ``*`` when it is significant, and says which test it
used: with ``paired`` differences (both reports on the same items, see ``evaluation.paired``) the
paired bootstrap interval of the difference excludes 0; otherwise the two 95% intervals do not
overlap, a conservative test (non-overlap implies a significant difference, not the reverse).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from themis.evaluation import stats
from themis.evaluation.report import AGGREGATED, PAIR_ACCURACY

# The metrics a console line and a suite table show, per judgment family. PAIR_ACCURACY is the
# figure published judge benchmarks report for pairs judged in both orders.
HEADLINE = {
    "pointwise": ("mae", "agr"),
    "pairwise": ("accuracy", "f1", "dual_order_consistency", PAIR_ACCURACY, "decisive_accuracy"),
}
NON_OVERLAP = "`*`: the two 95% intervals do not overlap (a conservative test of a real difference)."


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
        *[f"- {report['policy'][k]}" for k in ("macro", "pair_aggregate", "decisive") if k in report["policy"]],
        *([f"- rows rejected: {bench['rows_rejected']} ({_reasons(bench)})"] if bench.get("rows_rejected") else []),
        *[f"- **warning**: {w}" for w in report.get("warnings", [])],
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
    lines += _scales(section)
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
        lines += _group_rows(family, section["groups"])
    if section.get("human_human"):
        ceiling = section["human_human"]
        lines += [
            "",
            f"Human-human agreement ({ceiling['annotators']} annotators, {ceiling['items']} items): "
            + ", ".join(f"{k} {fmt(v)}" for k, v in ceiling.items() if k not in ("annotators", "items")),
        ]
    return lines + [""]


def _group_rows(family: str, groups: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Per group: n and each headline with its interval (pairs: per-verdict accuracy, and the
    per-pair two-order aggregate where the report has it)."""
    names = ["agr"] if family == "pointwise" else ["accuracy"]
    if family == "pairwise" and any(PAIR_ACCURACY in row for row in groups.values()):
        names.append(PAIR_ACCURACY)
    lines = ["", "| group | n | " + " | ".join(f"{k} | 95% CI" for k in names) + " |"]
    lines.append("|---|---|" + "---|---|" * len(names))
    for g, row in groups.items():
        cells = " | ".join(f"{fmt(row.get(k))} | {fmt_ci(row.get(f'{k}_ci'))}" for k in names)
        lines.append(f"| {g} | {row['n']} | {cells} |")
    return lines


def _scales(section: dict[str, Any]) -> list[str]:
    """Which score scales the items were on, when any is not 1-5, and each scale's own figures."""
    scales = section.get("scales") or {}
    if set(scales) <= {"1-5"}:
        return []
    lines = ["", "scales: " + ", ".join(f"{k} ({n} items)" for k, n in scales.items())]
    if "across_scales" in section:
        lines += [
            "",
            f"{section['across_scales']}.",
            "",
            "| scale | n | mae | agr | exact | qwk |",
            "|---|---|---|---|---|---|",
        ]
        for name, part in section.get("by_scale", {}).items():
            cells = " | ".join(fmt(part["metrics"].get(k)) for k in ("mae", "agr", "exact", "qwk"))
            lines.append(f"| {name} | {part['n']} | {cells} |")
    return lines


def _reasons(bench: Mapping[str, Any]) -> str:
    return ", ".join(f"{reason}: {n}" for reason, n in bench.get("rejected_by_reason", {}).items())


def headline_line(report: Mapping[str, Any]) -> str:
    """One line for the console: each family's headline metrics with intervals, and overall."""
    parts = []
    for family in ("pointwise", "pairwise"):
        cells = report.get(family, {}).get("metrics", {})
        shown = [k for k in HEADLINE[family] if cells.get(k, {}).get("value") is not None]
        parts += [f"{k} {fmt(cells[k]['value'])} {fmt_ci(cells[k]['ci'])}" for k in shown]
        if family in report:
            counts = report[family]["counts"]
            parts.append(f"{family} used {counts['used']}/{counts['predictions']}")
    parts.append(f"overall {fmt(report['overall']['value'])}")
    return ", ".join(parts)


def render_suite(suite: Mapping[str, Any]) -> str:
    """A judge's suite report: the aggregate, each benchmark's headline metrics, and subset means."""
    lines = [
        f"# Suite: judge `{suite['judge']['name']}` on {len(suite['benchmarks'])} benchmark(s)",
        "",
        f"- aggregate (the paper's): **{fmt(suite['aggregate']['value'])}**, {suite['aggregate']['definition']}",
        f"- mean over subsets: {suite['subset_mean']}",
        "",
        "| benchmark | items | metric | value | 95% CI | mean over subsets |",
        "|---|---|---|---|---|---|",
    ]
    for bench, entry in suite["benchmarks"].items():
        means = entry.get("mean_over_subsets", {})
        for key, cell in _headline_cells(entry["metrics"]):
            lines.append(
                f"| {bench} | {entry['benchmark']['items']} | {key} | {fmt(cell['value'])} | {fmt_ci(cell['ci'])} | "
                f"{fmt(means.get(key)) if means else ''} |"
            )
        lines.append(
            f"| {bench} | | overall | {fmt(entry['overall'])} | | {fmt(means.get('overall')) if means else ''} |"
        )
    for bench, entry in suite["benchmarks"].items():
        if entry.get("subsets"):
            lines += [
                "",
                f"## {bench}: subsets",
                "",
                "| subset | items | metric | value | 95% CI |",
                "|---|---|---|---|---|",
            ]
            for name, sub in entry["subsets"].items():
                lines += [
                    f"| {name} | {sub['items']} | {key} | {fmt(cell['value'])} | {fmt_ci(cell['ci'])} |"
                    for key, cell in _headline_cells(sub["metrics"])
                ]
    return "\n".join(lines) + "\n"


def _headline_cells(metrics: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The ``family/metric`` cells of the headline metrics, in the order of ``HEADLINE``."""
    keys = [f"{family}/{k}" for family, names in HEADLINE.items() for k in names]
    return [(k, metrics[k]) for k in keys if k in metrics and metrics[k]["value"] is not None]


def compare_reports(
    a: dict[str, Any],
    b: dict[str, Any],
    name_a: str = "A",
    name_b: str = "B",
    paired: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """Two reports side by side; ``*`` where a difference is significant (by ``paired`` bootstrap
    differences when given, else by non-overlapping intervals); the paper's relative gap."""
    lines = [f"# {name_a} vs {name_b}", ""]
    if a["benchmark"]["sha256"] != b["benchmark"]["sha256"]:
        lines += ["**Warning: the two reports were computed on different items.**", ""]
    rows, ours, base = _metric_rows(a, b, paired)
    lines += [
        f"| metric | {name_a} | 95% CI | {name_b} | 95% CI | difference |{' paired 95% CI |' if paired else ''}",
        "|---|---|---|---|---|---|" + ("---|" if paired else ""),
        *rows,
        f"| overall (normalised) | {fmt(a['overall']['value'])} | | {fmt(b['overall']['value'])} | | |"
        + (" |" if paired else ""),
        "",
    ]
    if ours:
        gap = stats.relative_gap(ours, base)
        lines.append(
            f"Relative gap of {name_a} over {name_b} (the paper's comparison, mean over {', '.join(ours)}): {gap:+.1%}"
        )
    lines.append(_test_note(paired))
    return "\n".join(lines)


def _metric_rows(
    a: Mapping[str, Any], b: Mapping[str, Any], paired: Mapping[str, Mapping[str, Any]] | None
) -> tuple[list[str], dict[str, float], dict[str, float]]:
    """Table rows of the metrics both reports have, and the values the relative gap averages."""
    rows, ours, base = [], {}, {}
    for family in ("pointwise", "pairwise"):
        for metric, cell_a in a.get(family, {}).get("metrics", {}).items():
            cell_b = b.get(family, {}).get("metrics", {}).get(metric)
            if cell_b is None:
                continue
            diff = None if cell_a["value"] is None or cell_b["value"] is None else cell_a["value"] - cell_b["value"]
            test = (paired or {}).get(f"{family}/{metric}")
            if paired is not None:
                mark = " *" if test and test["ci"] and not test["ci"][0] <= 0 <= test["ci"][1] else ""
            else:
                mark = " *" if _separated(cell_a["ci"], cell_b["ci"]) else ""
            rows.append(
                f"| {family}/{metric} | {fmt(cell_a['value'])} | {fmt_ci(cell_a['ci'])} | "
                f"{fmt(cell_b['value'])} | {fmt_ci(cell_b['ci'])} | {fmt(diff)}{mark} |"
                + (f" {fmt_ci(test['ci'] if test else None)} |" if paired is not None else "")
            )
            if metric in AGGREGATED[family] and diff is not None:
                ours[f"{family}/{metric}"], base[f"{family}/{metric}"] = cell_a["value"], cell_b["value"]
    return rows, ours, base


def _test_note(paired: Mapping[str, Mapping[str, Any]] | None) -> str:
    if paired is None:
        return "Test: " + NON_OVERLAP
    n = max((t["n"] for t in paired.values()), default=0)
    return (
        f"Test: paired bootstrap over the {n} shared items (the same resampled items for both judges); "
        "`*`: the paired 95% interval of the difference excludes 0."
    )


def compare_suites(
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    name_a: str = "A",
    name_b: str = "B",
    paired: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
) -> str:
    """Two suite reports side by side: each shared benchmark's headline metrics (and their means
    over subsets), the aggregates, and the paper's relative gap over every shared benchmark's
    aggregated metrics. ``paired``: per benchmark id, paired bootstrap differences (benchmarks
    without them use the non-overlap test); the output says which test each row used."""
    shared = [k for k in a["benchmarks"] if k in b["benchmarks"]]
    if not shared:
        raise ValueError("the two suite reports share no benchmark")
    paired = paired or {}
    lines = [f"# {name_a} vs {name_b} (suites)", ""]
    only = sorted(set(a["benchmarks"]) ^ set(b["benchmarks"]))
    if only:
        lines += [f"**Warning: benchmarks in only one suite (left out): {', '.join(only)}.**", ""]
    lines += [
        f"| benchmark | metric | {name_a} | 95% CI | {name_b} | 95% CI | difference | test |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ours: dict[str, float] = {}
    base: dict[str, float] = {}
    for bench in shared:
        ea, eb = a["benchmarks"][bench], b["benchmarks"][bench]
        if ea["benchmark"]["sha256"] != eb["benchmark"]["sha256"]:
            lines.append(f"| {bench} | **different items** | | | | | | |")
        for key, cell_a in _headline_cells(ea["metrics"]):
            cell_b = eb["metrics"].get(key)
            if cell_b is None or cell_b["value"] is None:
                continue
            test = paired.get(bench, {}).get(key)
            if test is not None:
                mark, how = (" *" if test["ci"] and not test["ci"][0] <= 0 <= test["ci"][1] else ""), "paired"
            else:
                mark, how = (" *" if _separated(cell_a["ci"], cell_b["ci"]) else ""), "overlap"
            lines.append(
                f"| {bench} | {key} | {fmt(cell_a['value'])} | {fmt_ci(cell_a['ci'])} | {fmt(cell_b['value'])} | "
                f"{fmt_ci(cell_b['ci'])} | {fmt(cell_a['value'] - cell_b['value'])}{mark} | {how} |"
            )
            family, metric = key.split("/")
            if metric in AGGREGATED[family]:
                ours[f"{bench}/{key}"], base[f"{bench}/{key}"] = cell_a["value"], cell_b["value"]
        lines += _subset_mean_rows(bench, ea, eb)
    lines += [
        f"| aggregate | normalised | {fmt(a['aggregate']['value'])} | | {fmt(b['aggregate']['value'])} | | | |",
        "",
    ]
    if ours:
        gap = stats.relative_gap(ours, base)
        lines.append(f"Relative gap of {name_a} over {name_b} (the paper's comparison): {gap:+.1%}")
    lines += [
        "Tests: `paired`: a paired bootstrap over the benchmark's shared items, `*` where the 95% interval of "
        "the difference excludes 0; `overlap`: " + NON_OVERLAP.removeprefix("`*`: ")
    ]
    return "\n".join(lines)


def _subset_mean_rows(bench: str, ea: Mapping[str, Any], eb: Mapping[str, Any]) -> list[str]:
    """Rows of the means over subsets both suites computed for this benchmark."""
    ma, mb = ea.get("mean_over_subsets", {}), eb.get("mean_over_subsets", {})
    keys = [k for k in ma if k in mb and ma[k] is not None and mb[k] is not None]
    return [
        f"| {bench} | {k} (mean over subsets) | {fmt(ma[k])} | | {fmt(mb[k])} | | {fmt(ma[k] - mb[k])} | |"
        for k in keys
        if k == "overall" or k.split("/")[1] in HEADLINE[k.split("/")[0]]
    ]


def _separated(ci_a: list[float] | None, ci_b: list[float] | None) -> bool:
    return bool(ci_a and ci_b and (ci_a[1] < ci_b[0] or ci_b[1] < ci_a[0]))
