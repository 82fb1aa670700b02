"""Shared fixtures: a tiny random model (once per session), a local Ray (once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _shared_dir() -> Path:
    """The workspace's shared folder (third-party data, KubeRay CRDs): THEMIS_SHARED_DIR, else the
    `shared` folder beside this checkout, else the workspace's /work/shared (for clones elsewhere)."""
    candidates = [os.environ.get("THEMIS_SHARED_DIR"), Path(__file__).resolve().parents[2] / "shared", "/work/shared"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return Path(__file__).resolve().parents[2] / "shared"  # absent: tests that need it say where they looked


SHARED = _shared_dir()
SHARED_DATA = SHARED / "data"
# Tests of real human-labelled data; skipped (and listed by -ra) where the shared folder is absent.
needs_shared = pytest.mark.skipif(not (SHARED_DATA / "pandalm").is_dir(), reason=f"no shared data at {SHARED_DATA}")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.fakes.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for all integration tests (starting Ray costs seconds)."""
    from themis.config import RayConfig
    from themis.runtime import init_ray

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # The tests checkpoint every couple of 50 ms steps, and each report waits for the controller
    # to collect the one before: poll often here (runs default to Ray's 2 s; see themis.runtime).
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    # Ray's workers inherit this environment once, at start: S3 clients in them (boto3, which signs
    # every request) need credentials for the tests' moto servers, as a cluster's pods get theirs
    # from their environment or IRSA. moto takes any.
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(name, value)
    init_ray(RayConfig(num_cpus=2, object_store_memory_mb=400, profile="small_machine"))
    import ray

    yield ray
    ray.shutdown()
