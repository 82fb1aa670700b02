"""The seven pipeline stages, one module each, in pipeline order.

Each module has ``run(cfg, store) -> StageReport`` (and may have ``check(cfg)``, which checks the
stage's own inputs before Ray starts): it reads its inputs from the run's store, writes its outputs
(Parquet) and rejects, and returns what happened. ``themis.runner`` records the report in the run's
manifest. Read the modules in order to follow one record from instruction to served verdict.

``REGISTRY`` names every stage's module and says in a line what it does (``themis --help`` shows
it). The modules are imported only when a stage runs: most of them import Ray, and this package
must stay importable without it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any


@dataclass
class StageReport:
    """What a stage read, wrote and counted; ``rows_in == rows_out + rows_rejected`` where it applies."""

    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in self.counts.items())
        return counts or "done"


@dataclass(frozen=True)
class Stage:
    """A stage's module (``run`` and maybe ``check``) and what the stage does, in one line."""

    module: str
    summary: str

    def load(self) -> ModuleType:
        """The stage's module, imported now (most of them import Ray: seconds)."""
        return importlib.import_module(self.module)


REGISTRY: dict[str, Stage] = {
    "instructions": Stage(
        "themis.stages.instructions", "stage 1: scenario-controlled instructions from an engine (Ray Data)"
    ),
    "responses": Stage("themis.stages.responses", "stage 2: K answers per instruction from a pool of answer models"),
    "judgments": Stage("themis.stages.judgments", "stage 3: the teacher grades the responses"),
    "dataset": Stage("themis.stages.dataset", "stage 4: filter, select and balance judgments into an SFT set"),
    "train": Stage("themis.stages.train", "stage 5: fine-tune the student judge (Ray Train + DeepSpeed)"),
    "evaluate": Stage(
        "themis.stages.evaluate", "stage 6: measure judges on labelled items; `evaluate compare A B` compares reports"
    ),
    "serve": Stage("themis.stages.serve", "stage 7: deploy the judge on Ray Serve (after the promotion gate)"),
}


def get_stage(name: str) -> Stage:
    """The registry's entry for ``name``; a name that is not a stage is a ValueError."""
    stage = REGISTRY.get(name)
    if stage is None:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(REGISTRY)}")
    return stage
