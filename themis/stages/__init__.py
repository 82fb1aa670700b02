"""The seven pipeline stages, one module each, in pipeline order.

Each module has ``run(cfg, store) -> StageReport``: it reads its inputs from the run's store,
writes its outputs (Parquet) and rejects, and returns what happened. ``themis.runner`` records the
report in the run's manifest. Read the modules in order to follow one record from instruction
to served verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
