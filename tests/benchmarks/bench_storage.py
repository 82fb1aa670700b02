"""Model-sized folders through Themis and through bare s3transfer: `make bench-storage`.

Two folders shaped like a model export (one big safetensors-like file of random bytes and a few
small JSON files), 0.5 GB and 2 GB, each moved against one local S3 server (moto on loopback, in its
own process: tests/benchmarks/s3_server.py; ``BENCH_S3_ENDPOINT`` points at another, e.g. Ceph RGW):

- ours: ``RunStore.upload_dir`` up, ``RunStore.local_dir`` down with a cold node model cache (the
  path every model load takes: listing, download into staging, a listing to check, rename);
- bare: one s3transfer ``TransferManager`` with 8 MB parts and 10 requests in flight, every file
  of the folder submitted at once (a listing first for the download, as ``aws s3 cp`` does);
- before: for reference, the 0.5 GB folder down through ``pyarrow.fs.copy_files`` (1 MB reads, one
  after another), what ``local_dir`` did before issue 26.

Each transfer runs ``BENCH_ROUNDS`` times (default 3), ours and bare alternating which goes first,
best time kept (this box is shared; the best is the least disturbed), after an untimed warm-up
upload and download (the server's first multipart upload costs it seconds of start-up). Prints MB/s and ends with

    RESULT download_ratio=<ours over bare> upload_ratio=<ours over bare>

throughput ratios over both folders (goal: at least 0.9). Not a pytest test: figures are printed,
not asserted. ``BENCH_SIZES_GB=0.5`` runs the small folder only; ``BENCH_S3_LATENCY_MS=20`` gives
every request the first-byte latency of a remote S3 (loopback has none, which flatters requests
made one after another). Data lives in a Themis scratch
folder, removed at the end (also when the bench fails or is stopped with Ctrl-C / SIGTERM).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks import s3_server  # noqa: E402
from themis.config import StorageConfig  # noqa: E402
from themis.scratch import scoped_scratch_dir  # noqa: E402
from themis.storage import RunStore  # noqa: E402

MB = 1024 * 1024
GB = 1024 * MB
SIZES_GB = [float(s) for s in os.environ.get("BENCH_SIZES_GB", "0.5,2").split(",")]
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
BUCKET = "bench"
SMALL = {"config.json": 2_000, "generation_config.json": 200, "tokenizer.json": 3 * MB, "tokenizer_config.json": 4_000}


def make_folder(path: Path, size: int) -> Path:
    """An export of ``size`` bytes: model.safetensors (random, written in 64 MB pieces) + small files."""
    path.mkdir(parents=True)
    for name, nbytes in SMALL.items():
        (path / name).write_bytes(os.urandom(nbytes))
    left = size - sum(SMALL.values())
    with open(path / "model.safetensors", "wb") as out:
        while left > 0:
            piece = min(left, 64 * MB)
            out.write(os.urandom(piece))
            left -= piece
    return path


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bare_manager(client):
    from s3transfer.manager import TransferConfig, TransferManager

    config = TransferConfig(multipart_threshold=8 * MB, multipart_chunksize=8 * MB, max_request_concurrency=10)
    return TransferManager(client, config)


def bare_upload(client, folder: Path, prefix: str) -> None:
    with bare_manager(client) as manager:
        futures = [
            manager.upload(str(p), BUCKET, f"{prefix}/{p.relative_to(folder).as_posix()}")
            for p in folder.rglob("*")
            if p.is_file()
        ]
        for future in futures:
            future.result()


def bare_download(client, prefix: str, dest: Path) -> None:
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/")["Contents"]
    dest.mkdir(parents=True)
    with bare_manager(client) as manager:
        futures = [manager.download(BUCKET, o["Key"], str(dest / o["Key"][len(prefix) + 1 :])) for o in listing]
        for future in futures:
            future.result()


def pyarrow_download(store: RunStore, dest: Path) -> None:
    import pyarrow.fs as pafs

    dest.mkdir(parents=True)
    pafs.copy_files(
        store.path("model"), str(dest), source_filesystem=store.fs, destination_filesystem=pafs.LocalFileSystem()
    )


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def bench_size(size_gb: float, scratch: Path, endpoint: str, client) -> dict[str, float]:
    """Best seconds of each transfer of one folder, ours and bare alternating."""
    tag = f"{size_gb:g}gb"
    folder = make_folder(scratch / f"export-{tag}", int(size_gb * GB))
    nbytes = folder_bytes(folder)
    times: dict[str, list[float]] = {"ours_up": [], "bare_up": [], "ours_down": [], "bare_down": []}
    for rnd in range(ROUNDS):
        storage = StorageConfig(
            root=f"s3://{BUCKET}/themis", s3_endpoint=endpoint, model_cache_dir=str(scratch / f"cache-{tag}-{rnd}")
        )
        store = RunStore(storage, f"run-{tag}")
        steps = [
            ("ours_up", partial(store.upload_dir, folder, "model")),
            ("bare_up", partial(bare_upload, client, folder, f"bare-{tag}")),
            ("ours_down", partial(check_ours, store, nbytes)),
            ("bare_down", partial(check_bare, client, tag, scratch / f"bare-down-{tag}-{rnd}", nbytes)),
        ]
        if rnd % 2:  # bare first every other round
            steps = [steps[1], steps[0], steps[3], steps[2]]
        for name, step in steps:
            times[name].append(timed(step))
            print(f"  {tag} round {rnd + 1}: {name:9s} {times[name][-1]:6.2f} s", flush=True)
        shutil.rmtree(storage.model_cache_dir, ignore_errors=True)
    best = {name: min(values) for name, values in times.items()}
    best["bytes"] = nbytes
    if size_gb == min(SIZES_GB):
        before = timed(pyarrow_download, store, scratch / f"pyarrow-down-{tag}")
        best["pyarrow_down"] = before
        shutil.rmtree(scratch / f"pyarrow-down-{tag}", ignore_errors=True)
    shutil.rmtree(folder)
    return best


def check_ours(store: RunStore, nbytes: int) -> None:
    check(store.local_dir("model"), nbytes)


def check(local: Path, nbytes: int) -> None:
    if folder_bytes(local) != nbytes:
        raise RuntimeError(f"{local} holds {folder_bytes(local)} bytes, not {nbytes}")


def check_bare(client, tag: str, dest: Path, nbytes: int) -> None:
    bare_download(client, f"bare-{tag}", dest)
    check(dest, nbytes)
    shutil.rmtree(dest)


def warm_up(client, scratch: Path) -> None:
    """One small multipart upload and download, untimed, so neither side pays the server's start-up."""
    folder = make_folder(scratch / "warm-up", 40 * MB)
    bare_upload(client, folder, "warm-up")
    bare_download(client, "warm-up", scratch / "warm-up-down")
    shutil.rmtree(folder)
    shutil.rmtree(scratch / "warm-up-down")


def main() -> None:
    import boto3
    from botocore.config import Config

    os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "WHEN_REQUIRED")  # both sides alike
    os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "WHEN_REQUIRED")
    print(f"machine: {os.cpu_count()} CPUs (shared with other jobs); folders {SIZES_GB} GB; {ROUNDS} rounds")
    with scoped_scratch_dir("bench-storage-") as scratch:
        server = None
        endpoint = os.environ.get("BENCH_S3_ENDPOINT")
        if not endpoint:
            (scratch / "server").mkdir()
            endpoint, server = s3_server.start(scratch / "server")
        try:
            # botocore's defaults but for the read timeout, which Themis raises too (themis.transfer):
            # moto takes over a minute to assemble 2 GB on a busy box, and a retry races the first call.
            client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=Config(read_timeout=300))
            client.create_bucket(Bucket=BUCKET)
            warm_up(client, scratch)
            results = {size: bench_size(size, scratch, endpoint, client) for size in SIZES_GB}
        except Exception:
            if server:  # what the server said, before its folder goes
                print("".join((scratch / "server" / "server.log").read_text().splitlines(True)[-40:]), file=sys.stderr)
            raise
        finally:
            if server:
                server.kill()
                server.wait()
    report(results)


def report(results: dict[float, dict[str, float]]) -> None:
    print(f"\n{'folder':>8} {'direction':>9} {'ours MB/s':>10} {'bare MB/s':>10} {'ours/bare':>9}")
    for size, r in results.items():
        mb = r["bytes"] / MB
        for way in ("up", "down"):
            ours, bare = mb / r[f"ours_{way}"], mb / r[f"bare_{way}"]
            print(f"{size:>6g}GB {way:>9} {ours:10.1f} {bare:10.1f} {ours / bare:9.2f}")
        if "pyarrow_down" in r:
            print(f"{size:>6g}GB {'down':>9} pyarrow copy_files (before): {mb / r['pyarrow_down']:.1f} MB/s")
    ratios = {
        way: sum(r[f"bare_{way}"] for r in results.values()) / sum(r[f"ours_{way}"] for r in results.values())
        for way in ("down", "up")
    }
    print(f"RESULT download_ratio={ratios['down']:.2f} upload_ratio={ratios['up']:.2f}")


if __name__ == "__main__":
    main()
