"""Folders between a node and S3 (models, checkpoints): many files at once, big files in parts.

``themis.storage`` calls this for ``RunStore.upload_dir`` and ``local_dir`` on an ``s3://`` root; a
local root needs none of it (a copy through the kernel, or the folder read where it lies).

Why s3transfer (the transfer manager under boto3's ``upload_file`` and ``aws s3 cp``) and not
pyarrow: ``pyarrow.fs.copy_files`` reads a file as a sequence of 1 MB range GETs, one after the
other (514 round trips for a 538 MB model, 28,000 for a 14B judge in bf16), and pyarrow's S3
filesystem has no setting that fetches ranges of one file in parallel. s3transfer splits every
object above the part size into ranged GETs (downloads) or UploadPart calls (uploads) and runs the
requests of all files of the folder on one thread pool, so ``transfer_threads`` requests are in
flight until the folder is done; it retries a failed part, and boto3 (already a dependency) brings
it. The bare-s3transfer bench (``make bench-storage``) holds us to its throughput. Publishing an
attempt's folder is a server-side copy through the same manager (``copy_folder``), which splits the
files S3 will not copy in one request (over 5 GB) into parts.

The S3 client takes the same settings as the run root's pyarrow filesystem (``StorageConfig``'s
endpoint and region; credentials from the environment or boto3's usual chain, as pyarrow's).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from themis.config import StorageConfig

MB = 1024 * 1024
GB = 1024 * MB
# Server-side copies (publishing an attempt's folder): one CopyObject request up to S3's 5 GB limit
# for it, UploadPartCopy in large parts above (transformers 5 saves a 14B bf16 judge as one 28 GB file).
COPY_THRESHOLD = 5 * GB
COPY_PART = 512 * MB


@dataclass(frozen=True)
class RemoteFile:
    """One object under a folder prefix: its path relative to the folder, size and ETag."""

    rel: str
    size: int
    etag: str


def s3_client(storage: StorageConfig) -> Any:
    """A boto3 S3 client for ``storage``'s endpoint with a connection per transfer thread; one per
    process and endpoint (clients are thread-safe; making one loads botocore's model, ~0.2 s)."""
    return _client(storage.s3_endpoint, storage.s3_region, storage.transfer_threads)


@functools.lru_cache(maxsize=16)
def _client(endpoint: str | None, region: str, threads: int) -> Any:
    import boto3
    from botocore.config import Config

    checksums = {}
    if endpoint:
        # As for pyarrow (themis.storage): S3-compatible servers reject AWS's newer checksum trailers.
        checksums = {"request_checksum_calculation": "when_required", "response_checksum_validation": "when_required"}
    config = Config(
        max_pool_connections=threads + 2,  # + a listing beside a full pool of parts
        retries={"mode": "standard", "max_attempts": 5},
        # A server may assemble a big multipart object for minutes before CompleteMultipartUpload
        # answers; a retry after botocore's default 60 s would race the first call.
        read_timeout=300,
        **checksums,
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, config=config)


def transfer_manager(client: Any, storage: StorageConfig) -> Any:
    """An s3transfer manager: ``transfer_part_mb`` parts, ``transfer_threads`` requests in flight."""
    from s3transfer.manager import TransferConfig, TransferManager

    part = storage.transfer_part_mb * MB
    config = TransferConfig(
        multipart_threshold=part,
        multipart_chunksize=part,
        max_request_concurrency=storage.transfer_threads,
        # Parts waiting to be written to disk, per file being downloaded: enough to keep every
        # thread busy while the one writer thread catches up.
        max_in_memory_download_chunks=max(10, storage.transfer_threads),
        max_in_memory_upload_chunks=max(10, storage.transfer_threads),
    )
    return TransferManager(client, config)


def split_path(path: str) -> tuple[str, str]:
    """``bucket/prefix`` (a pyarrow S3 path) -> (bucket, prefix)."""
    bucket, _, prefix = path.strip("/").partition("/")
    return bucket, prefix


def list_folder(client: Any, bucket: str, prefix: str) -> list[RemoteFile]:
    """Every object under ``prefix/`` (folder markers left out), sorted by path."""
    base = prefix.rstrip("/") + "/"
    files = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(base) :]
            if rel and not rel.endswith("/"):  # pyarrow's create_dir leaves empty "dir/" markers
                files.append(RemoteFile(rel=rel, size=int(obj["Size"]), etag=obj["ETag"].strip('"')))
    return sorted(files, key=lambda f: f.rel)


def download_folder(
    client: Any, storage: StorageConfig, bucket: str, prefix: str, files: Iterable[RemoteFile], dest: Path
) -> None:
    """Download ``files`` (from ``list_folder``) into ``dest``, all at once, big ones in parts."""
    files = list(files)
    inside = dest.resolve()
    for f in files:  # a key such as "model/../../x" must not write outside the folder
        if not (inside / f.rel).resolve().is_relative_to(inside):
            raise ValueError(f"refusing to download {f.rel!r}: it points outside {dest}")
    for parent in {(dest / f.rel).parent for f in files}:
        parent.mkdir(parents=True, exist_ok=True)
    base = prefix.rstrip("/") + "/"
    with transfer_manager(client, storage) as manager:
        futures = [
            manager.download(bucket, base + f.rel, str(dest / f.rel), subscribers=[_KnownSize(f.size)]) for f in files
        ]
        _wait(futures)


def upload_folder(client: Any, storage: StorageConfig, local: Path, bucket: str, prefix: str) -> list[str]:
    """Upload every file under ``local`` to ``prefix/<relative path>``; return the relative paths."""
    files = sorted(p for p in local.rglob("*") if p.is_file())
    base = prefix.rstrip("/") + "/"
    rels = [p.relative_to(local).as_posix() for p in files]
    with transfer_manager(client, storage) as manager:
        futures = [
            manager.upload(str(path), bucket, base + rel, subscribers=[_KnownSize(os.path.getsize(path))])
            for path, rel in zip(files, rels)
        ]
        _wait(futures)
    return rels


def copy_folder(client: Any, storage: StorageConfig, bucket: str, src_prefix: str, dest_prefix: str) -> int:
    """Copy every object under ``src_prefix/`` to ``dest_prefix/`` inside ``bucket``, server-side
    (no byte passes through this process); return how many."""
    from s3transfer.manager import TransferConfig, TransferManager

    files = list_folder(client, bucket, src_prefix)
    src, dest = src_prefix.rstrip("/") + "/", dest_prefix.rstrip("/") + "/"
    config = TransferConfig(
        multipart_threshold=COPY_THRESHOLD,
        multipart_chunksize=COPY_PART,
        max_request_concurrency=storage.transfer_threads,
    )
    with TransferManager(client, config) as manager:
        futures = [
            manager.copy({"Bucket": bucket, "Key": src + f.rel}, bucket, dest + f.rel, subscribers=[_KnownSize(f.size)])
            for f in files
        ]
        _wait(futures)
    return len(files)


def _wait(futures: list[Any]) -> None:
    """Wait for every transfer; the first failure propagates (the manager's exit cancels the rest)."""
    for future in futures:
        future.result()


class _KnownSize:
    """An s3transfer subscriber that hands over the size we already know (from the listing or
    the file), so a download starts without a HEAD request per object."""

    def __init__(self, size: int):
        self.size = size

    def on_queued(self, future: Any, **_: Any) -> None:
        future.meta.provide_transfer_size(self.size)

    def on_progress(self, **_: Any) -> None:
        pass

    def on_done(self, **_: Any) -> None:
        pass
