"""The training section: loss curves (total and each objective), learning rate and throughput. Pure:
no Ray or torch.

Read from the run's TensorBoard events (``train/tensorboard/``, every step's scalars as the
training loop logs them: ``loss/*``, ``lr``, ``throughput/*``; ``themis.view.events``), else from
``train/summary.json`` (per-step losses and step times, no learning rate). The page says which.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from themis.training.metrics import LOSS_CURVE, TENSORBOARD
from themis.view.curation import _not_there, _stage_warnings
from themis.view.documents import Missing
from themis.view.events import read_scalars

if TYPE_CHECKING:
    from themis.view.data import RunView

SUMMARY = "train/summary.json"  # as themis.training.loop.SUMMARY writes it (the view does not load the loop)
# Chart -> the series it draws, in order; a series the run lacks is left out.
CHARTS = {
    "loss": ["loss/total", "loss/score_ce", "loss/rationale", "loss/validation_ce"],
    "learning rate": ["lr"],
    "throughput": ["throughput/tokens_per_s", "throughput/steps_per_s", "throughput/mfu"],
}
FACTS = ("step", "resumed_from_step", "loss_kind", "peak_rss_mb", "peak_rss_growth_mb")


def training_section(view: RunView) -> dict[str, Any]:
    """Each chart's series as [[step, value], ...], where they came from, and the run's facts."""
    summary = view.store.read_json(SUMMARY) if view.store.exists(SUMMARY) else None
    events = view.list_files(TENSORBOARD)
    if summary is None and not events:
        raise Missing(_not_there(view, "train", SUMMARY))
    notes: list[str] = []
    if events:
        scalars = read_scalars([(rel, _read(view, rel)) for rel in events])
        series, notes, source = scalars.series, scalars.notes, f"TensorBoard events ({len(events)} files)"
    else:
        series, source = from_summary(summary or {}), f"{SUMMARY} (no TensorBoard events: no learning rate)"
    entry = view.stage("train") or {}
    details = entry.get("details") or {}
    charts = {
        name: {tag: [[s, v] for s, v in series[tag]] for tag in tags if series.get(tag)}
        for name, tags in CHARTS.items()
    }
    other = sorted(set(series) - {t for tags in CHARTS.values() for t in tags})
    charts |= {tag: {tag: [[s, v] for s, v in series[tag]]} for tag in other}
    return {
        "warnings": _stage_warnings(view, "train") + notes,
        "source": source,
        "charts": {k: v for k, v in charts.items() if v},
        "facts": {k: summary[k] for k in FACTS if summary and k in summary}
        | {k: details[k] for k in ("zero_stage", "world_size", "lora", "export", "val_loss") if k in details},
        "images": [LOSS_CURVE] if view.store.exists(LOSS_CURVE) else [],
    }


def _read(view: RunView, rel: str) -> bytes:
    with view.store.fs.open_input_stream(view.store.path(rel)) as src:
        return src.read()


def from_summary(summary: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """The series ``train/summary.json`` holds, under the TensorBoard tags' names."""

    def steps(values: list | None) -> list[tuple[int, float]]:
        return [(n, v) for n, v in enumerate(values or [], 1) if v is not None]

    seconds = summary.get("step_seconds") or []
    return {
        "loss/total": steps(summary.get("train_loss")),
        "loss/score_ce": steps(summary.get("score_loss")),
        "loss/rationale": steps(summary.get("rationale_loss")),
        "loss/validation_ce": [
            (v["step"], v["loss"]) for v in summary.get("val_loss") or [] if v.get("loss") is not None
        ],
        "throughput/steps_per_s": [(n, 1 / s) for n, s in enumerate(seconds, 1) if s],
    }
