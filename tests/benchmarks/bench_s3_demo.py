"""The demo pipeline on an ``s3://`` run root against a local one: `make bench-s3-demo`.

Runs ``themis pipeline jobs/configs/demo.yaml`` (SmolLM2 on CPU, every stage) as a user runs it,
twice: on a local run root, then on ``s3://themis/runs`` on a local S3 server (moto in its own
process on loopback, reading ranges as a real server does: tests/benchmarks/s3_server.py) with an
empty node model cache, as a fresh node has. Prints each stage's seconds from the manifest for both,
and ends with

    RESULT s3_over_local=<s3 pipeline s / local pipeline s> local_s=... s3_s=...

(goal: within 1.3x). One round of each: a demo takes minutes on 2 cores. ``BENCH_S3_LATENCY_MS``
gives every S3 request a remote server's time to first byte. Not a pytest test: the figures are
printed, not asserted (tests/test_s3_pipeline.py checks the s3:// run itself in CI). Everything it
writes lives in a Themis scratch folder, removed at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks import s3_server  # noqa: E402
from themis.config import StorageConfig  # noqa: E402
from themis.scratch import scoped_scratch_dir  # noqa: E402
from themis.storage import RunStore  # noqa: E402

CONFIG = ROOT / "jobs" / "configs" / "demo.yaml"
STAGES = ("instructions", "responses", "judgments", "dataset", "train", "evaluate", "serve")


def run_demo(storage: StorageConfig, env: dict[str, str]) -> tuple[float, dict[str, float]]:
    """Seconds the whole `themis pipeline` took, and each stage's seconds as its manifest says."""
    overrides = [f"run.storage.root={storage.root}"]
    if storage.s3_endpoint:
        overrides.append(f"run.storage.s3_endpoint={storage.s3_endpoint}")
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "themis.cli", "pipeline", str(CONFIG), *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.monotonic() - started
    if out.returncode != 0:
        raise SystemExit(f"the demo on {storage.root} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    stages = RunStore(storage, "demo").manifest()["stages"]
    return seconds, {name: stages[name]["duration_s"] for name in STAGES if name in stages}


def main() -> None:
    import boto3

    with scoped_scratch_dir("bench-s3-demo-") as scratch:
        endpoint, server = s3_server.start(scratch)
        try:
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="themis")
            runs = {}
            for name, storage in (
                ("local", StorageConfig(root=str(scratch / "runs"))),
                ("s3", StorageConfig(root="s3://themis/runs", s3_endpoint=endpoint)),
            ):
                # A fresh node: an empty model cache for each run.
                env = os.environ | {"THEMIS_MODEL_CACHE": str(scratch / f"cache-{name}")}
                runs[name] = run_demo(storage, env)
                total, stages = runs[name]
                print(f"{name:>5}: pipeline {total:6.1f} s | " + " ".join(f"{s} {v:.0f}" for s, v in stages.items()))
        finally:
            server.kill()
            server.wait()
    local, s3 = runs["local"][0], runs["s3"][0]
    print(f"RESULT s3_over_local={s3 / local:.2f} local_s={local:.0f} s3_s={s3:.0f}")


if __name__ == "__main__":
    main()
