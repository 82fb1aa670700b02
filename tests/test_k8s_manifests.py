"""The KubeRay manifests in k8s/, checked offline: render, validate strictly, follow references.

Every overlay is rendered with ``kubectl kustomize``; core objects validate with kubernetes-validate
(strict), KubeRay objects against the CRD schemas in ../shared/k8s/crds where an unknown field is an
error. References are followed for real: each RayJob's entrypoint names a job module and a config
that load with its overrides, and the RayService's Serve application is imported and built.
"""

from __future__ import annotations

import copy
import importlib
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube import (
    CRDS,
    OVERLAYS,
    ROOT,
    crd_errors,
    kubectl,
    of_kind,
    pod_templates,
    ray_cluster_specs,
    render,
)
from themis.config import STAGES, load_config

pytestmark = pytest.mark.skipif(kubectl() is None, reason="kubectl (with kustomize) is not installed")
K8S_VERSION = "1.32.0"  # the kubectl on the dev machines; EKS 1.32 in infra/terraform


def settings(overlay: str) -> dict[str, str]:
    """The overlay's settings ConfigMap (local-config: read by kustomize, never applied)."""
    return yaml.safe_load((ROOT / "k8s" / "overlays" / overlay / "settings.yaml").read_text())["data"]


def serve_config(overlay: str) -> dict[str, Any]:
    (service,) = of_kind(render(overlay), "RayService")
    return yaml.safe_load(service["spec"]["serveConfigV2"])


def test_there_are_local_and_aws_overlays() -> None:
    assert {"local", "aws"} <= set(OVERLAYS)
    assert CRDS.is_dir(), f"KubeRay CRDs not found at {CRDS}"


# --- rendering and schemas -----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_expected_objects(overlay: str) -> None:
    kinds = [doc["kind"] for doc in render(overlay)]
    assert kinds.count("RayCluster") == 1 and kinds.count("RayService") == 1
    assert kinds.count("RayJob") == len(STAGES) + 1  # one per stage, one for the pipeline
    assert "ConfigMap" not in kinds, "the settings ConfigMap is local-config and must not be applied"
    assert {doc["metadata"].get("namespace") for doc in render(overlay) if doc["kind"] != "Namespace"} == {"themis"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_make_targets_can_select_each_part(overlay: str) -> None:
    # `make train-cluster`, `deploy-judge` and `submit-rayjob` apply parts of the overlay by label.
    parts = {"RayCluster": "train-cluster", "RayService": "judge", "RayJob": "job"}
    for doc in render(overlay):
        labels = doc["metadata"]["labels"]
        assert labels["themis.dev/component"] == parts.get(doc["kind"], "platform"), doc["metadata"]["name"]
        if doc["kind"] == "RayJob":
            assert doc["metadata"]["name"] == f"themis-{labels['themis.dev/stage']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_validate_strictly(overlay: str) -> None:
    import kubernetes_validate

    for doc in render(overlay):
        if not doc["apiVersion"].startswith("ray.io/"):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kuberay_objects_validate_strictly_against_the_crds(overlay: str) -> None:
    problems = {
        f"{doc['kind']}/{doc['metadata']['name']}": crd_errors(doc)
        for doc in render(overlay)
        if doc["apiVersion"].startswith("ray.io/")
    }
    assert problems and not any(problems.values()), problems


def test_the_crd_check_rejects_unknown_fields_and_takes_int_or_string() -> None:
    (job, *_) = of_kind(render("aws"), "RayJob")
    bad = copy.deepcopy(job)
    bad["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["bogus"] = 1
    bad["spec"]["deletionStrategy"]["retain"] = True
    errors = crd_errors(bad)
    assert any("'bogus' was unexpected" in e for e in errors), errors
    assert any("'retain' was unexpected" in e for e in errors), errors
    quantities = copy.deepcopy(job)
    resources = quantities["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
    resources["limits"]["cpu"] = 4  # an int where the schema says int-or-string
    assert crd_errors(quantities) == []
    typo = copy.deepcopy(job)
    typo["spec"]["backofflimit"] = 3
    assert crd_errors(typo) == ["spec: Additional properties are not allowed ('backofflimit' was unexpected)"]


# --- what KubeRay's operator checks beyond the schema (its validation.go), for our objects ------


def kuberay_rule_errors(doc: dict[str, Any]) -> list[str]:
    """The operator's admission rules that a schema cannot express, for the features we use."""
    errors = []
    for cluster in ray_cluster_specs(doc):
        errors += _cluster_rule_errors(cluster)
    if doc["kind"] == "RayJob":
        errors += _deletion_rule_errors(doc["spec"], autoscaling=True)
    if doc["kind"] == "RayService":
        errors += _upgrade_rule_errors(doc["spec"])
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?", doc["metadata"]["name"]):
        errors.append("name must be a DNS-1035 label short enough for the names KubeRay derives")
    return errors


def _cluster_rule_errors(cluster: dict[str, Any]) -> list[str]:
    errors = []
    if cluster.get("authOptions", {}).get("mode") == "token":
        version = tuple(int(x) for x in cluster.get("rayVersion", "0").split("."))
        if version < (2, 52, 0):
            errors.append("authOptions.mode=token needs rayVersion >= 2.52.0")
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    if cluster.get("autoscalerOptions", {}).get("version") == "v2":
        if not cluster.get("enableInTreeAutoscaling"):
            errors.append("autoscaler v2 needs enableInTreeAutoscaling")
        if any(g["template"]["spec"].get("restartPolicy", "Never") != "Never" for g in groups):
            errors.append("autoscaler v2 needs restartPolicy Never or unset")
    for group in groups:
        start = group.get("rayStartParams", {})
        if group.get("resources") and {"num-cpus", "num-gpus", "memory", "resources"} & set(start):
            errors.append("resources set both in rayStartParams and resources")
    for group in cluster.get("workerGroupSpecs", []):
        if not 0 <= group["minReplicas"] <= group["maxReplicas"]:
            errors.append(f"{group['groupName']}: minReplicas must be <= maxReplicas")
    return errors


def _deletion_rule_errors(spec: dict[str, Any], autoscaling: bool) -> list[str]:
    rules = spec.get("deletionStrategy", {}).get("deletionRules", [])
    errors = []
    if rules and spec.get("shutdownAfterJobFinishes"):
        errors.append("shutdownAfterJobFinishes and deletionRules are mutually exclusive")
    if not rules:
        errors.append("no deletion rules")
    order = ("DeleteWorkers", "DeleteCluster", "DeleteSelf")
    by_status: dict[str, dict[str, int]] = {}
    for rule in rules:
        if autoscaling and rule["policy"] == "DeleteWorkers":
            errors.append("DeleteWorkers is refused with autoscaling on")
        ttls = by_status.setdefault(rule["condition"].get("jobStatus", ""), {})
        if rule["policy"] in ttls:
            errors.append(f"duplicate rule {rule['policy']} for {rule['condition']}")
        ttls[rule["policy"]] = rule["condition"].get("ttlSeconds", 0)
    for status, ttls in by_status.items():
        values = [ttls[p] for p in order if p in ttls]
        if values != sorted(values):
            errors.append(f"{status or 'jobDeploymentStatus'}: TTLs must grow Workers <= Cluster <= Self")
    if spec.get("activeDeadlineSeconds", 1) <= 0 or spec.get("backoffLimit", 0) < 0:
        errors.append("activeDeadlineSeconds must be > 0 and backoffLimit >= 0")
    return errors


def _upgrade_rule_errors(spec: dict[str, Any]) -> list[str]:
    strategy = spec.get("upgradeStrategy", {})
    if strategy.get("type") != "NewClusterWithIncrementalUpgrade":
        return [] if strategy.get("type") in (None, "NewCluster", "None") else ["unknown upgrade type"]
    options = strategy.get("clusterUpgradeOptions") or {}
    errors = [] if spec["rayClusterConfig"].get("enableInTreeAutoscaling") else ["needs autoscaling"]
    if not options.get("gatewayClassName") or options.get("intervalSeconds", 0) <= 0:
        errors.append("incremental upgrade needs gatewayClassName and intervalSeconds > 0")
    if not all(0 <= options.get(k, 100) <= 100 for k in ("maxSurgePercent", "stepSizePercent")):
        errors.append("maxSurgePercent and stepSizePercent must be 0..100")
    return errors


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kuberay_objects_pass_the_operators_own_rules(overlay: str) -> None:
    problems = {
        f"{doc['kind']}/{doc['metadata']['name']}": kuberay_rule_errors(doc)
        for doc in render(overlay)
        if doc["apiVersion"].startswith("ray.io/")
    }
    assert not any(problems.values()), problems


def test_the_operator_rules_catch_what_they_claim() -> None:
    (job, *_) = of_kind(render("aws"), "RayJob")
    bad = copy.deepcopy(job)
    bad["spec"]["shutdownAfterJobFinishes"] = True
    bad["spec"]["deletionStrategy"]["deletionRules"].append(
        {"policy": "DeleteWorkers", "condition": {"jobStatus": "FAILED", "ttlSeconds": 99999}}
    )
    errors = kuberay_rule_errors(bad)
    assert any("mutually exclusive" in e for e in errors)
    assert any("refused with autoscaling" in e for e in errors)
    assert any("TTLs must grow" in e for e in errors)


# --- pods ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_non_root_with_limits_and_probes(overlay: str) -> None:
    for doc in render(overlay):
        for role, template in pod_templates(doc):
            where = f"{overlay} {doc['kind']}/{doc['metadata']['name']} {role}"
            pod = template["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, where
            assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
            for container in pod["containers"]:
                security = container["securityContext"]
                assert security["allowPrivilegeEscalation"] is False, where
                assert security["capabilities"]["drop"] == ["ALL"], where
                assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
                assert {"cpu", "memory"} <= set(container["resources"]["limits"]), where
                if role != "submitter":  # a Job's pod runs to completion: no probes
                    assert "readinessProbe" in container and "livenessProbe" in container, where
        for cluster in ray_cluster_specs(doc):  # the autoscaler sidecar KubeRay adds to each head
            sidecar = cluster["autoscalerOptions"]
            assert sidecar["securityContext"]["allowPrivilegeEscalation"] is False
            assert sidecar["securityContext"]["runAsNonRoot"] is True
            assert set(sidecar["resources"]) == {"requests", "limits"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_the_projects_own_and_tagged(overlay: str) -> None:
    dockerfiles = {"themis-train": "Dockerfile.train", "themis-inference": "Dockerfile.inference"}
    for doc in render(overlay):
        for _, template in pod_templates(doc):
            for container in template["spec"]["containers"]:
                name, _, tag = container["image"].rpartition(":")
                base = name.rsplit("/", 1)[-1]
                assert base in dockerfiles and tag and tag != "latest", container["image"]
                assert (ROOT / "ray_cluster" / dockerfiles[base]).is_file()


def test_ray_version_matches_pyproject_and_the_images() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray_pin,) = [d for d in deps if d.startswith("ray[")]
    version = ray_pin.split("==")[1]
    for overlay in OVERLAYS:
        for doc in render(overlay):
            for cluster in ray_cluster_specs(doc):
                assert cluster["rayVersion"] == version
    for dockerfile in (ROOT / "ray_cluster").glob("Dockerfile.*"):
        assert f"ARG RAY_VERSION={version}" in dockerfile.read_text(), dockerfile


def test_aws_service_account_uses_irsa_and_no_static_keys() -> None:
    docs = render("aws")
    (account,) = of_kind(docs, "ServiceAccount")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == settings("aws")["roleArn"]
    text = yaml.safe_dump_all(docs)
    assert "AWS_SECRET_ACCESS_KEY" not in text and "AWS_ACCESS_KEY_ID" not in text
    assert not of_kind(docs, "Secret")


# --- references -----------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rayjob_entrypoint_runs_a_job_module_on_a_shipped_config(overlay: str) -> None:
    stages = set()
    for job in of_kind(render(overlay), "RayJob"):
        argv = shlex.split(job["spec"]["entrypoint"])
        assert argv[:2] == ["python", "-m"] and argv[3] == "--config", argv
        module, config, overrides = argv[2], argv[4], argv[5:]
        assert importlib.util.find_spec(module) is not None, module
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module
        assert config == settings(overlay)["jobConfig"] and (ROOT / config).is_file(), config
        cfg = load_config(ROOT / config, overrides)  # the overrides parse and validate too
        assert cfg.run.storage.root == settings(overlay)["storageRoot"]
        stage = job["metadata"]["labels"]["themis.dev/stage"]
        assert module == f"jobs.{stage}" or (stage == "serve" and cfg.stages == ["serve"])
        stages.add(stage)
    assert stages == {*STAGES, "pipeline"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rayjobs_use_the_runtime_env_of_ray_job_submit(overlay: str) -> None:
    from themis.runtime import LOCAL_ENV, SMALL_MACHINE_ENV

    submitted = yaml.safe_load((ROOT / "ray_cluster" / "runtime_env.yaml").read_text())
    for job in of_kind(render(overlay), "RayJob"):
        assert yaml.safe_load(job["spec"]["runtimeEnvYAML"]) == {"env_vars": submitted["env_vars"]}
    # LOCAL_ENV and the small-machine tuning are the laptop's (e.g. OMP_NUM_THREADS=1); none of it
    # belongs in a cluster job.
    assert not set(submitted["env_vars"]) & set(LOCAL_ENV | SMALL_MACHINE_ENV)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rayjob_clusters_are_the_training_cluster(overlay: str) -> None:
    docs = render(overlay)
    (train,) = of_kind(docs, "RayCluster")
    for job in of_kind(docs, "RayJob"):
        assert job["spec"]["rayClusterSpec"] == train["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serve_config_imports_and_builds_the_judge_app(
    overlay: str, tiny_model_dir: Path, tmp_path: Path, monkeypatch
) -> None:

    from ray.serve import Application

    from themis.config import StorageConfig
    from themis.storage import RunStore

    (app,) = serve_config(overlay)["applications"]
    args = app["args"]
    assert args == {"config": settings(overlay)["jobConfig"], "storage_root": settings(overlay)["storageRoot"]}
    module_name, _, attr = app["import_path"].partition(":")
    builder = getattr(importlib.import_module(module_name), attr)
    # The real config and overrides, with the run root moved to a folder holding a trained model.
    cfg = load_config(ROOT / args["config"])
    store = RunStore(StorageConfig(root=str(tmp_path)), cfg.run.name)
    store.upload_dir(tiny_model_dir, "model")
    # What the pods have: an API key (the mounted Secret; here the environment) and an evaluation
    # report that passes the config's promotion gate.
    monkeypatch.setenv(cfg.serve.auth.keys_env, "a-test-key")
    report = {"overall": {"value": 1.0}, "pairwise": {"metrics": {"dual_order_consistency": {"value": 1.0}}}}
    store.write_json(f"reports/evaluation/{cfg.serve.promotion.judge}/report.json", report)
    built = builder(args | {"storage_root": str(tmp_path)})
    assert isinstance(built, Application)
    deployment = built._bound_deployment
    (declared,) = app["deployments"]
    assert declared["name"] == deployment.name == "JudgeServer"
    # Explicit autoscaling in serveConfigV2, equal to what the job config asks for.
    assert declared["autoscaling_config"] == cfg.serve.autoscaling.model_dump()
    assert deployment._deployment_config.autoscaling_config.target_ongoing_requests == (
        cfg.serve.autoscaling.target_ongoing_requests
    )


def test_judge_service_upgrades_incrementally_on_aws() -> None:
    (service,) = of_kind(render("aws"), "RayService")
    strategy = service["spec"]["upgradeStrategy"]
    assert strategy["type"] == "NewClusterWithIncrementalUpgrade"
    assert strategy["clusterUpgradeOptions"]["gatewayClassName"]
    for overlay in OVERLAYS:
        assert serve_config(overlay)["http_options"] == {"host": "0.0.0.0", "port": 8000}


def _gib(quantity: str) -> float:
    units = {"Mi": 1 / 1024, "Gi": 1, "Ti": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_ray_pod_has_a_sized_node_model_cache(overlay: str) -> None:
    # Models from an s3:// run root land in the node model cache (themis.model_cache): on every Ray
    # pod it is a volume of a stated size, mounted where THEMIS_MODEL_CACHE says, and the cache's own
    # limit stays below that size (an emptyDir outgrowing its sizeLimit gets the pod evicted).
    for doc in render(overlay):
        for role, template in pod_templates(doc):
            if role == "submitter":
                continue
            where = f"{overlay} {doc['kind']}/{doc['metadata']['name']} {role}"
            pod = template["spec"]
            (container,) = pod["containers"]
            env = {e["name"]: e["value"] for e in container.get("env", [])}
            (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == env.get("THEMIS_MODEL_CACHE")]
            (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
            assert "emptyDir" in volume and "medium" not in volume["emptyDir"], where  # disk, not memory
            size = _gib(volume["emptyDir"]["sizeLimit"])
            assert 0 < float(env["THEMIS_MODEL_CACHE_GB"]) < size, where  # both in GiB (model_cache.GB)
