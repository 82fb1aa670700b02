"""checkov (static security and best-practice checks) on k8s/, infra/terraform/ and the Dockerfiles.

No failed check may be left unexplained: a check that does not apply is skipped beside the code it
concerns, with the reason (``#checkov:skip=ID:reason`` in HCL and Dockerfiles, a
``checkov.io/skipN: ID=reason`` annotation in manifests), and this test fails on a skip without one.
checkov knows no KubeRay kinds, so the pod templates inside the rendered RayClusters, RayJobs and
RayService are checked too, written out as the Pods and Jobs KubeRay makes of them.

checkov's dependencies clash with the project's (boto3), so it lives in its own venv, which
`make checkov-venv` builds (about 10 s through uv, once); the test builds it when it is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.kube import OVERLAYS, ROOT, checkov_objects, kubectl, render

CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
MIN_REASON = 20  # characters: a reason, not a placeholder


@pytest.fixture(scope="module")
def checkov() -> Path:
    if not CHECKOV.exists():
        done = subprocess.run(["make", "-s", "checkov-venv"], cwd=ROOT, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            # A failure, not a skip: the checkov bar must not vanish because an install broke.
            pytest.fail(f"could not build the checkov venv (make checkov-venv): {done.stderr[-500:]}")
    return CHECKOV


@pytest.fixture(scope="module")
def rendered_pods(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every overlay rendered, KubeRay pod templates written out as Pods and Jobs (see kube.py)."""
    if kubectl() is None:
        pytest.skip("kubectl (with kustomize) is not installed")
    folder = tmp_path_factory.mktemp("checkov-rendered")
    for overlay in OVERLAYS:
        objects = [obj for doc in render(overlay) for obj in checkov_objects(doc)]
        (folder / f"{overlay}.yaml").write_text(yaml.safe_dump_all(objects, sort_keys=False))
    return folder


@pytest.fixture(scope="module")
def reports(checkov: Path, rendered_pods: Path) -> list[dict]:
    """checkov's JSON reports: one run per folder (several -d in one run repeat the first folder's
    Kubernetes results instead of scanning the others, in checkov 3.3)."""
    scans = [("k8s", "kubernetes"), ("infra/terraform", "terraform"), ("ray_cluster", "dockerfile"),
             (str(rendered_pods), "kubernetes")]  # fmt: skip
    # No worker processes: checkov's forked runners can deadlock, and these scans are small.
    env = dict(os.environ, CHECKOV_PARALLELIZATION_TYPE="none")
    found = []
    for folder, framework in scans:
        command = [str(checkov), "--skip-download", "--output", "json", "--compact", "--framework", framework]
        command += ["-d", folder]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode in (0, 1), done.stderr[-3000:]  # 1 = some check failed, reported below
        assert "Traceback" not in done.stderr, done.stderr[-3000:]  # a crashed runner reports nothing
        found += _json_documents(done.stdout)
    return found


def _json_documents(text: str) -> list[dict]:
    """checkov prints one JSON document per scanned folder (a report, or a list of them)."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while at < len(text.rstrip()):
        parsed, end = decoder.raw_decode(text, at)
        found += parsed if isinstance(parsed, list) else [parsed]
        at = end + len(text[end:]) - len(text[end:].lstrip())
    return found


def _checks(reports: list[dict], kind: str) -> list[dict]:
    return [check for report in reports for check in report["results"][kind]]


def test_no_failed_checks(reports: list[dict]) -> None:
    failed = sorted({
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})"
        for c in _checks(reports, "failed_checks")
    })  # fmt: skip
    assert not failed, "fix these or skip them beside the code with a reason:\n" + "\n".join(failed)


def test_every_skip_gives_its_reason(reports: list[dict]) -> None:
    skipped = _checks(reports, "skipped_checks")
    assert skipped, "no skips found: are the skip annotations and comments still read?"
    unexplained = sorted({
        f"{c['check_id']}: {c['resource']} ({c['file_path']})"
        for c in skipped
        if len((c["check_result"].get("suppress_comment") or "").strip()) < MIN_REASON
    })  # fmt: skip
    assert not unexplained, "skips without a reason:\n" + "\n".join(unexplained)


def test_every_framework_and_the_kuberay_pods_were_checked(reports: list[dict]) -> None:
    frameworks = {r["check_type"] for r in reports}
    assert {"kubernetes", "terraform", "dockerfile"} <= frameworks
    pods = {c["resource"] for c in _checks(reports, "passed_checks") if c["resource"].startswith(("Pod.", "Job."))}
    assert any("themis-train-head" in p for p in pods) and any("themis-judge-gpu-workers" in p for p in pods), pods
    assert any(p.startswith("Job.") and "submitter" in p for p in pods), pods
