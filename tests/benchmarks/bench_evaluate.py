"""Speed of meta-evaluation on recorded verdicts: `python tests/benchmarks/bench_evaluate.py`.

Prints the seconds it takes to load the PandaLM test set, join both recorded judges' verdicts and
build their full reports (1000 bootstrap resamples, per-category intervals, chance levels) and
plots. The target is under 10 s on a 2-core machine. Not a pytest test: timings are printed, not asserted.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from themis.config import RecordedJudge  # noqa: E402
from themis.evaluation import benchmarks, judges, markdown, plots  # noqa: E402
from themis.evaluation.report import Settings, build_report  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "pandalm"
JUDGES = {
    "gpt-3.5-turbo": ("gpt-3.5-turbo-testset-v1.json", "gpt_result", {"1": "A", "2": "B", "Tie": "tie"}),
    "pandalm-7b": ("pandalm-7b-testset-v1.json", "pandalm_result", {"0": "tie", "1": "A", "2": "B"}),
}


def main() -> None:
    start = time.perf_counter()
    items = benchmarks.load_pandalm(SHARED.parent)
    loaded = time.perf_counter()
    for name, (file, field, values) in JUDGES.items():
        t0 = time.perf_counter()
        judge = RecordedJudge(name=name, path=str(SHARED / file), verdict_field=field, values=values)
        preds = judges.load_recorded(judge, items).predictions
        report = build_report(items, preds, Settings(unparsable="tie", breakdown="category"))
        t1 = time.perf_counter()
        pngs = plots.render_plots(report)
        markdown.render_report(
            report
            | {
                "judge": {"name": name, "kind": "recorded"},
                "benchmark": {"name": "pandalm", "source": str(SHARED), "items": len(items), "sha256": "0" * 64},
            }
        )
        t2 = time.perf_counter()
        acc = report["pairwise"]["metrics"]["accuracy"]["value"]
        print(f"{name}: report {t1 - t0:.2f} s, plots+markdown {t2 - t1:.2f} s ({len(pngs)} PNGs), accuracy {acc:.4f}")
    total = time.perf_counter() - start
    print(f"load {loaded - start:.2f} s; total {total:.2f} s for {len(items)} items x {len(JUDGES)} judges")


if __name__ == "__main__":
    main()
