"""Throughput of IFD scoring through its Ray Data actor pool: `make bench-ifd`.

Scores judge records (a real single-answer judge prompt from ``themis.judge.call`` and a judgment of
45-80 tokens as the answer: 550-640 tokens in all with SmolLM2's tokenizer) with
``themis.dataplane.ifd_scoring.score_dataset``, the dataset stage's path, with no score cache, and prints records/s:

- on the tiny random model of the tests (2 layers, hidden 64), 1 actor and 2 actors;
- on SmolLM2-135M-Instruct (``builtin:smollm2-135m-instruct``, CPU, float32), 1 actor and 2 actors.

Each actor uses one torch thread and reserves one CPU; Ray gets one CPU more than the actors so
that Ray Data's own tasks can run beside them. Rates are end to end (actor start and model load
included) and steady (records over the time from the first batch an actor began, its model
loaded, to the last batch one finished; the actors stamp their batches). The input is
materialised before the clock starts. Not a pytest test: figures
are printed, never asserted. About 5 minutes on an idle 2-core machine. Ends with
``RESULT smollm2_records_per_s=<steady rate with 1 actor> two_actor_speedup=<2 actors / 1 actor>``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from themis.config import IFDScorerConfig, RayConfig  # noqa: E402
from themis.curation.filters import render_target  # noqa: E402
from themis.judge.call import render_call, single_call  # noqa: E402
from themis.models import SMOLLM2  # noqa: E402

SCENARIOS = ("close_qa", "open_qa", "math_qa", "creative_writing")


def judge_records(n: int) -> list[tuple[str, list[dict[str, str]]]]:
    """``n`` distinct (key, chat) records: a judge prompt and the teacher's judgment."""
    records = []
    for i in range(n):
        scenario = SCENARIOS[i % len(SCENARIOS)]
        call = single_call(
            scenario,
            f"Question {i}: explain why the sky looks blue at noon.",
            f"Answer {i}: " + "Light scatters. " * (4 + i % 6),
        )
        target = render_target(
            {
                "kind": "single",
                "score": 1 + i % 5,
                "rationale": "Strengths: it is on topic and correct [[4]]. Shortcomings: it is short and skips "
                f"the reason why blue light scatters more than red light [[{1 + i % 5}]]. " * (1 + i % 2),
            }
        )
        messages = [*render_call(call).messages, {"role": "assistant", "content": target}]
        records.append((f"r{i}", messages))
    return records


def measure(model: str, records: list, actors: int, batch: int) -> dict[str, float]:
    """One pass over ``records`` with ``actors`` scoring actors; rates end to end and steady."""
    import ray

    from themis.dataplane.ifd_scoring import INPUT, ScorerPass, score_dataset
    from themis.dataplane.tables import to_table

    cfg = IFDScorerConfig(
        batch_size=batch,
        num_threads=1,
        pool={"min_actors": actors, "max_actors": actors, "cpus_per_actor": 1, "batch_size": 2 * batch},
    )
    scorer = ScorerPass(model, cfg, max_seq_len=2048)
    table = to_table(({"key": k, "messages": m} for k, m in records), INPUT)
    ds = ray.data.from_arrow(table).materialize()
    start = time.perf_counter()
    seen, began, ended = 0, [], []
    for out in score_dataset(ds, scorer).iter_batches(batch_format="pyarrow", batch_size=None):
        seen += out.num_rows
        began += out.column("started_at").to_pylist()
        ended += out.column("finished_at").to_pylist()
    total = time.perf_counter() - start
    # Steady: from the first batch an actor began (its model loaded) to the last one it finished.
    steady = seen / (max(ended) - min(began))
    assert seen == len(records), f"scored {seen} of {len(records)}"
    return {"records": seen, "seconds": total, "end_to_end": seen / total, "steady": steady}


def report(name: str, result: dict[str, float]) -> None:
    print(
        f"{name:<24} {result['records']:>5} records in {result['seconds']:6.1f} s: "
        f"{result['end_to_end']:7.2f} records/s end to end, {result['steady']:7.2f} steady",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny-records", type=int, default=256)
    parser.add_argument("--smollm2-records", type=int, default=48)
    args = parser.parse_args()
    from tests.fakes.tiny_model import build_tiny_model
    from themis.models import resolve_model
    from themis.runtime import init_ray

    tiny = build_tiny_model(Path(tempfile.mkdtemp(prefix="bench-ifd-")) / "tiny")
    resolve_model(SMOLLM2)  # converted once, before any clock
    init_ray(RayConfig(num_cpus=3, object_store_memory_mb=400, profile="small_machine"))
    results = {}
    for label, model, n, batch in (
        ("tiny", str(tiny), args.tiny_records, 16),
        ("smollm2", SMOLLM2, args.smollm2_records, 4),
    ):
        records = judge_records(n)
        for actors in (1, 2):
            results[(label, actors)] = measure(model, records, actors, batch)
            report(f"{label}, {actors} actor(s)", results[(label, actors)])
    one, two = results[("smollm2", 1)]["steady"], results[("smollm2", 2)]["steady"]
    tiny_speedup = results[("tiny", 2)]["steady"] / results[("tiny", 1)]["steady"]
    print(f"tiny two-actor speedup (steady): {tiny_speedup:.2f}")
    print(f"RESULT smollm2_records_per_s={one:.3f} two_actor_speedup={two / one:.2f}")


if __name__ == "__main__":
    main()
