"""Overhead of the train stage against bare DeepSpeed: `make bench-train`
(or `python tests/benchmarks/bench_train.py [--steps N] [--rounds N]`).

Both sides train the tiny random Llama of the tests with DeepSpeed ZeRO-2 on 2 gloo workers, one
thread each, on the same micro-batches:
- ours: the train stage (Ray Data tokenisation, Ray Train workers reading shards from the run
  root, the multi-objective loss code in its default cross-entropy form, TensorBoard logging);
- bare: `torchrun --nproc_per_node 2 tests/benchmarks/bare_deepspeed_train.py`, the same steps
  with Hugging Face's loss and no Ray, reading the same split tokenised by the stage's own batch
  function (without Ray, so it is ready before ours starts Ray).

Steady state is the mean seconds per optimizer step after the first WARMUP steps (whole loop
iterations: reading rows, the step, logging; not evaluation or checkpoints). Start-up is the time
from launch (ours: before Ray starts) to the end of the first step; printed, not counted.

This shared 2-core box's speed drifts by up to 1.5x between minutes (the same loop measured 28 and
43 ms/step within ten minutes), so the two sides alternate: a bare run, then ROUNDS times ours (a
fresh run of the stage on a fresh local Ray) followed by a bare run with Ray shut down, so every
run of ours has a bare run just before and just after it, each with the machine to itself. The
headline ratio pools all steady steps of each side; the ratio of each round (ours against the mean
of the bare runs around it) is printed too, with its median. The bare script also runs once while
the first local Ray is still up and idle (GCS, raylet, dashboard, log monitor, Ray Data's helper
actors): that separates what Ray's idle daemons cost a 2-core machine from what running inside Ray
Train's workers costs.
Ends with `RESULT ratio=<bare s/step over ours, all rounds> startup_s=<ours, first round>
bare_startup_s=<bare> ratio_beside_ray=<bare beside idle Ray, s/step over ours' first round>
ratio_rounds_median=<median of the rounds' ratios>`.
Prints, never asserts: on a shared 2-core machine the figures move with the neighbours' load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

WARMUP = 20
LOCAL = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "OMP_NUM_THREADS": "1",
    "DS_ACCELERATOR": "cpu",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # A few hundred steps: a 2 s window (60 steps) moved by ±0.1 with one daemon's wake-up.
    parser.add_argument("--steps", type=int, default=500, help="optimizer steps in each run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of ours, each between two bare runs")
    args = parser.parse_args()
    for key, value in LOCAL.items():
        os.environ.setdefault(key, value)  # a variable set by the caller wins, for experiments
    work = Path(tempfile.mkdtemp(prefix="themis-bench-train-"))
    from tests.fakes.tiny_model import build_tiny_model

    model = build_tiny_model(work / "model")
    cfg = _config(model)
    shard = _bare_shard(work, cfg, _store(work, "bare", args.steps))
    import ray

    bare, ours, beside_ray = [_run_bare(work, cfg, shard, args.steps)], [], None
    for round_ in range(args.rounds):
        ours.append(_run_ours(cfg, _store(work, f"ours{round_}", args.steps)))
        if beside_ray is None:
            beside_ray = _run_bare(work, cfg, shard, args.steps)
        ray.shutdown()  # the bare side proper gets the machine to itself, as ours did
        bare.append(_run_bare(work, cfg, shard, args.steps))
    _print_runs(bare, ours, beside_ray)
    ratio = _mean(bare, "s_per_step") / _mean(ours, "s_per_step")
    per_round = [(b["s_per_step"] + a["s_per_step"]) / 2 / o["s_per_step"] for b, o, a in zip(bare, ours, bare[1:])]
    print(
        f"ours against the bare runs around it, round by round: {', '.join(f'{r:.3f}' for r in per_round)}; "
        f"all steps of both sides: {ratio:.3f}"
    )
    print(
        f"RESULT ratio={ratio:.3f} startup_s={ours[0]['startup_s']:.1f} bare_startup_s={bare[0]['startup_s']:.1f} "
        f"ratio_beside_ray={beside_ray['s_per_step'] / ours[0]['s_per_step']:.3f} "
        f"ratio_rounds_median={statistics.median(per_round):.3f}"
    )


def _print_runs(bare: list[dict], ours: list[dict], beside_ray: dict) -> None:
    rows = [("bare torchrun", bare[0])]
    for round_, (o, b) in enumerate(zip(ours, bare[1:]), start=1):
        rows += [(f"ours (Ray Train) #{round_}", o), ("bare torchrun", b)]
    rows.append(("bare beside idle Ray", beside_ray))
    for name, r in rows:
        steady, median, startup, loss = r["s_per_step"] * 1000, r["median_s"] * 1000, r["startup_s"], r["final_loss"]
        print(
            f"{name:22s} steady {steady:.1f} ms/step (median {median:.1f})  start-up {startup:.1f} s  "
            f"final loss {loss:.4f}"
        )


def _mean(runs: list[dict], key: str) -> float:
    return statistics.mean(r[key] for r in runs)


def _store(work: Path, run: str, steps: int):
    """A run with the tests' training rows: one per round of ours, which must start from scratch."""
    from tests.test_train_stage import _rows
    from themis.config import StorageConfig
    from themis.storage import RunStore

    store = RunStore(StorageConfig(root=str(work / "runs")), run)
    store.write_table("dataset/train.parquet", _rows(steps * 4, "tr"))  # 2 workers x micro-batch 2
    store.write_table("dataset/validation.parquet", _rows(0, "va"))
    return store


def _config(model: Path):
    from themis.config import PipelineConfig

    return PipelineConfig.model_validate(
        {
            "engines": {"teacher": {"kind": "transformers", "model": str(model)}},
            "responses": {"pool": [{"name": "m", "engine": "teacher"}]},
            "ray": {"num_cpus": 2, "object_store_memory_mb": 400, "profile": "small_machine"},
            "train": {
                "base_model": str(model),
                "num_workers": 2,
                "cpus_per_worker": 1,
                "zero_stage": 2,
                "micro_batch_size": 2,
                "max_seq_len": 128,
                "lr": 1e-3,
                "max_failures": 0,
            },
        }
    )


def _run_ours(cfg, store) -> dict[str, float]:
    from themis.runtime import init_ray
    from themis.stages import train as train_stage

    started = time.time()
    init_ray(cfg.ray)
    train_stage.run(cfg, store)
    summary = store.read_json("train/summary.json")
    return _figures(summary["step_seconds"], summary["first_step_at"] - started, summary["train_loss"])


def _run_bare(work: Path, cfg, shard: Path, steps: int) -> dict[str, float]:
    settings = {
        "train": cfg.train.model_dump(),
        "shard": str(shard),
        "seed": cfg.run.seed,
        "steps": steps,
        "pad_id": _pad_id(cfg.train.base_model),
    }
    path = work / "bare.json"
    path.write_text(json.dumps(settings))
    torchrun = Path(sys.executable).with_name("torchrun")
    script = ROOT / "tests" / "benchmarks" / "bare_deepspeed_train.py"
    started = time.time()
    out = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", str(script), str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("BARE ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"the bare torchrun run failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    result = json.loads(line[5:])
    return _figures(result["step_seconds"], result["first_step_at"] - started, result["train_loss"])


def _bare_shard(work: Path, cfg, store) -> Path:
    """The train split tokenised as the stage's Ray Data step does (its batch function, one batch,
    the same row order), without Ray: the bare side's input, ready before ours starts Ray."""
    import pyarrow.parquet as pq

    from themis.training.data import _tokenize_batch

    folder = work / "bare-shard"
    folder.mkdir()
    table = pq.read_table(store.read_path("dataset/train.parquet"), columns=["example_id", "messages"])
    pq.write_table(_tokenize_batch(table, cfg.train.base_model, cfg.train.max_seq_len), folder / "train.parquet")
    return folder


def _figures(step_seconds: list[float], startup_s: float, losses: list[float]) -> dict[str, float]:
    steady = step_seconds[WARMUP:] or step_seconds
    return {
        "s_per_step": statistics.mean(steady),
        "median_s": statistics.median(steady),
        "startup_s": startup_s,
        "final_loss": losses[-1],
    }


def _pad_id(model: str) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    return tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id


if __name__ == "__main__":
    main()
