"""The few lines a finished pipeline ends with: what each stage produced, where, and what to run next.

Pure: it reads the run's manifest (a dict) and returns text, so it is tested without running
anything, and the console, a notebook or a CI log can all show the same summary.
"""

from __future__ import annotations

from typing import Any

# The counts that say what a stage produced, in the order a reader wants them; a stage missing
# from here shows its scalar counts as they are.
HEADLINE = {
    "instructions": ("rows_out", "rows_rejected"),
    "responses": ("rows_out", "rows_rejected"),
    "judgments": ("rows_out", "rows_rejected", "calls"),
    "dataset": ("train", "validation", "rows_rejected"),
    "train": ("steps", "train_examples", "validation_examples"),
    "evaluate": ("benchmarks", "items", "judges"),
    "serve": ("smoke_requests",),
}
NAMES = {"rows_out": "kept", "rows_rejected": "rejected", "smoke_requests": "smoke requests answered"}


def render_summary(manifest: dict[str, Any], stages: list[str], serve_command: str, view_command: str) -> str:
    """The summary of ``stages`` as recorded in ``manifest`` (``RunStore.manifest()``): one line per
    stage with its counts and main output relative to the run root, then the commands to serve the
    judge and to look at the run."""
    root = manifest.get("run_root", "")
    recorded = manifest.get("stages", {})
    lines = [f"run {root}:"]
    for name in stages:
        entry = recorded.get(name)
        if entry is None:
            lines.append(f"  {name:<12} not recorded")
            continue
        status = "" if entry.get("status") == "ok" else f" [{entry.get('status')}]"
        lines.append(f"  {name:<12} {render_counts(name, entry.get('counts') or {})}{status}")
        output = main_output(entry.get("outputs") or {}, root)
        if output:
            lines.append(f"  {'':<12} -> {output}")
    lines.append("next:")
    lines.append(f"  serve the judge:  {serve_command}")
    lines.append(f"  inspect the run:  {view_command}")
    return "\n".join(lines)


def render_counts(stage: str, counts: dict[str, Any]) -> str:
    """``counts`` as ``7 kept, 0 rejected``: the stage's headline counts, or every scalar count."""
    keys = [k for k in HEADLINE.get(stage, ()) if k in counts]
    keys = keys or [k for k, v in counts.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    return ", ".join(f"{counts[k]} {_noun(counts[k], NAMES.get(k, k.replace('_', ' ')))}" for k in keys) or "no counts"


def _noun(count: Any, noun: str) -> str:
    """``judges`` after 2, ``judge`` after 1 (plural count names end in ``s``)."""
    return noun[:-1] if count == 1 and noun.endswith("s") and not noun.endswith("ss") else noun


def main_output(outputs: dict[str, str], root: str) -> str:
    """The stage's first output, relative to the run root when it lies under it (a URL as it is)."""
    if not outputs:
        return ""
    where = next(iter(outputs.values()))
    prefix = root.rstrip("/") + "/"
    return where[len(prefix) :] if root and where.startswith(prefix) else where
