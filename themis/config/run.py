"""The shared parts every stage reads: the run (name, seed, storage) and the Ray it runs on."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from themis.config.base import Strict, plain_name_check


class StorageConfig(Strict):
    """Where a run's outputs live, and how models and checkpoints move to and from there."""

    root: str = Field("runs", description="Where runs live: a local folder or an s3://bucket/prefix URI.")
    s3_endpoint: str | None = Field(
        None, description="Endpoint override for S3-compatible servers, e.g. http://127.0.0.1:9000."
    )
    s3_region: str = Field("us-east-1", description="Region passed to the S3 client.")
    transfer_part_mb: int = Field(
        8, ge=5, le=5120, description="Part size of model and checkpoint transfers with S3 (ranged GETs, upload parts)."
    )
    transfer_threads: int = Field(10, ge=1, le=64, description="Requests in flight per folder transfer with S3.")
    model_cache_dir: str | None = Field(
        None,
        description="The node's model cache (models downloaded from an s3:// root, one copy per node). "
        "None: THEMIS_MODEL_CACHE, else <THEMIS_CACHE or ~/.cache/themis>/model-cache.",
    )
    model_cache_gb: float | None = Field(
        None,
        gt=0,
        description="Size limit of the node's model cache; least recently used models not in use are "
        "evicted. None: THEMIS_MODEL_CACHE_GB, else 50.",
    )


class RunConfig(Strict):
    """One run: its name (the folder of all its outputs), its seed, and where it is stored."""

    name: Annotated[str, plain_name_check("run.name")] = Field(
        "demo", description="Run name; all outputs go under <storage.root>/<name>/."
    )
    seed: int = Field(0, description="Seed for every random choice of the pipeline.")
    storage: StorageConfig = Field(StorageConfig(), description="Where the run's outputs live (local or S3).")


class RayConfig(Strict):
    """The Ray the stages run on: a private local one, or a cluster joined by address."""

    address: str = Field(
        "local",
        description="'local' starts a private Ray in this process; 'auto' or ray://... joins a cluster. "
        "RAY_ADDRESS in the environment (set by `ray job submit`) wins.",
    )
    num_cpus: int | None = Field(None, description="CPUs for a local Ray; None = all of the machine.")
    object_store_memory_mb: int = Field(512, ge=75, description="Object store size for a local Ray.")
    profile: Literal["default", "small_machine"] = Field(
        "default",
        description="Tuning for a local Ray on a machine of a few cores (the demo's and the benches'): "
        "'small_machine' runs Ray's workers (the stage's compute) at normal priority and Ray's own "
        "processes (GCS, dashboard, agents, log monitor) at nice 10, where Ray's default is the reverse "
        "(workers at nice 15, so every daemon wake-up preempts training or serving on 2 cores), one "
        "OpenMP thread per process, and two Parquet footer readers per read instead of 32. "
        "'default' leaves Ray as it ships. Never applied when joining a cluster.",
    )
