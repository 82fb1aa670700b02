"""The judging scenarios and quiz attributes, read from the data files in ``themis/data``.

Scenario definitions and criteria are data, not code: edit ``scenarios.yaml`` to change them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

DATA_DIR = Path(__file__).parents[1] / "data"


@dataclass(frozen=True)
class Criterion:
    name: str
    description: str


@dataclass(frozen=True)
class Scenario:
    id: str
    name: str
    group: str
    definition: str
    generation: str  # "reference" (reference-based questioning) or "role_play" (quizzing)
    reference_guided: bool  # grade with a reference answer: only where there is one right answer
    criteria: tuple[Criterion, ...]


@cache
def load_scenarios() -> dict[str, Scenario]:
    """All scenarios by id, in the file's order."""
    raw = yaml.safe_load((DATA_DIR / "scenarios.yaml").read_text())["scenarios"]
    return {s["id"]: _scenario(s) for s in raw}


def _scenario(raw: dict[str, Any]) -> Scenario:
    criteria = tuple(Criterion(c["name"], c["description"]) for c in raw["criteria"])
    if raw["generation"] not in ("reference", "role_play"):
        raise ValueError(f"scenario {raw['id']}: generation must be 'reference' or 'role_play'")
    fields = {k: raw[k] for k in ("id", "name", "group", "definition", "generation")}
    return Scenario(**fields, reference_guided=bool(raw["reference_guided"]), criteria=criteria)


def get_scenario(scenario_id: str) -> Scenario:
    """One scenario; a clear error names the known ids when it does not exist."""
    scenarios = load_scenarios()
    if scenario_id not in scenarios:
        raise KeyError(f"unknown scenario {scenario_id!r}; known: {', '.join(scenarios)}")
    return scenarios[scenario_id]


def select_scenarios(ids: list[str] | None) -> list[Scenario]:
    """The scenarios named by ``ids`` (all when None), checking every id."""
    return [get_scenario(i) for i in ids] if ids else list(load_scenarios().values())


@cache
def load_quiz_attributes() -> dict[str, Any]:
    """Difficulties, audiences and per-scenario subjects/topics/tasks for role-playing quizzing."""
    return yaml.safe_load((DATA_DIR / "quiz.yaml").read_text())


def load_passages(folder: str | Path | None) -> list[tuple[str, str]]:
    """(title, text) of every .txt passage in ``folder`` (the shipped set when None), sorted by name."""
    root = Path(folder) if folder else DATA_DIR / "passages"
    if not root.is_dir():
        raise FileNotFoundError(f"passages folder not found: {root}")
    passages = []
    for path in sorted(root.glob("*.txt")):
        text = path.read_text().strip()
        if text:
            title, _, body = text.partition("\n")
            passages.append((title.strip(), body.strip() or title.strip()))
    if not passages:
        raise FileNotFoundError(f"no non-empty .txt passages in {root}")
    return passages
