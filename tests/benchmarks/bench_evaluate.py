"""Speed of meta-evaluation: `make bench-evaluate` (or `python tests/benchmarks/bench_evaluate.py`).

Prints the seconds it takes to
- load the PandaLM test set, join both recorded judges' verdicts and build their full reports
  (1000 bootstrap resamples, per-category intervals, chance levels) and plots;
- build the report, plots and Markdown of a synthetic 27,000-pair benchmark (58 categories, 1000
  resamples), judged in one order (the target: 10 s or less on a 2-core machine) and in both.
Ends with one line: `RESULT seconds_27k=<s> ...`. Not a pytest test: timings are printed, not asserted.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from themis.config import RecordedJudge  # noqa: E402
from themis.evaluation import benchmarks, judges, markdown, plots  # noqa: E402
from themis.evaluation.benchmarks import PairwiseItem  # noqa: E402
from themis.evaluation.judges import Prediction  # noqa: E402
from themis.evaluation.report import Settings, build_report  # noqa: E402
from themis.judge.call import flip_winner  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "pandalm"
JUDGES = {
    "gpt-3.5-turbo": ("gpt-3.5-turbo-testset-v1.json", "gpt_result", {"1": "A", "2": "B", "Tie": "tie"}),
    "pandalm-7b": ("pandalm-7b-testset-v1.json", "pandalm_result", {"0": "tie", "1": "A", "2": "B"}),
}


def main() -> None:
    pandalm = bench_pandalm()
    one, both = bench_synthetic(27_000, ("ab",)), bench_synthetic(27_000, ("ab", "ba"))
    print(
        f"RESULT seconds_27k={one:.2f} seconds_27k_both_orders={both:.2f} "
        f"seconds_pandalm_total={pandalm['total']:.2f} seconds_pandalm_load={pandalm['load']:.2f}"
    )


def bench_pandalm() -> dict[str, float]:
    """PandaLM's two recorded judges, from loading to plots; seconds for loading and in total."""
    start = time.perf_counter()
    items = benchmarks.load_pandalm(SHARED.parent)
    loaded = time.perf_counter()
    for name, (file, field, values) in JUDGES.items():
        t0 = time.perf_counter()
        judge = RecordedJudge(name=name, path=str(SHARED / file), verdict_field=field, values=values)
        preds = judges.load_recorded(judge, items).predictions
        report = build_report(items, preds, Settings(unparsable="tie", breakdown="category"))
        t1 = time.perf_counter()
        n_png = render(report, name, len(items))
        t2 = time.perf_counter()
        acc = report["pairwise"]["metrics"]["accuracy"]["value"]
        print(f"{name}: report {t1 - t0:.2f} s, plots+markdown {t2 - t1:.2f} s ({n_png} PNGs), accuracy {acc:.4f}")
    total = time.perf_counter() - start
    print(f"load {loaded - start:.2f} s; total {total:.2f} s for {len(items)} items x {len(JUDGES)} judges")
    return {"load": loaded - start, "total": total}


def bench_synthetic(n: int, orders: tuple[str, ...]) -> float:
    """A judge right 70% of the time on n pairs (45% A, 45% B, 10% tie) in 58 categories."""
    rng = np.random.default_rng(0)
    gold = rng.choice(["A", "B", "tie"], size=n, p=[0.45, 0.45, 0.1])
    items = [
        PairwiseItem(f"i{k}", "q", "a", "b", "open_qa", (str(g),), category=f"c{k % 58}") for k, g in enumerate(gold)
    ]
    preds = []
    for order in orders:
        guess = np.where(rng.random(n) < 0.7, gold, rng.choice(["A", "B", "tie"], size=n))
        shown = [flip_winner(str(g)) if order == "ba" else str(g) for g in guess]
        preds += [Prediction(i.item_id, order, False, winner=w) for i, w in zip(items, shown)]
    start = time.perf_counter()
    report = build_report(items, preds, Settings(resamples=1000, breakdown="category"))
    built = time.perf_counter()
    render(report, "synthetic", n)
    seconds = time.perf_counter() - start
    acc = report["pairwise"]["metrics"]["accuracy"]
    print(
        f"{n} pairs in {len(orders)} order(s): report {built - start:.2f} s, total with plots+markdown "
        f"{seconds:.2f} s, accuracy {acc['value']:.4f} {acc['ci']}"
    )
    return seconds


def render(report: dict, name: str, n_items: int) -> int:
    """Plots and Markdown, as the stage writes them; the number of PNGs."""
    pngs = plots.render_plots(report)
    header = {
        "judge": {"name": name, "kind": "recorded"},
        "benchmark": {"name": name, "source": str(SHARED), "items": n_items, "sha256": "0" * 64},
    }
    markdown.render_report(report | header)
    return len(pngs)


if __name__ == "__main__":
    main()
