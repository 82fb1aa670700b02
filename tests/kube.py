"""Offline Kubernetes checks: render kustomize overlays, validate KubeRay objects strictly.

No API server is involved. Core kinds go to ``kubernetes-validate``; KubeRay kinds to jsonschema on
the CRDs' OpenAPI v3 schemas, made strict the way the API server prunes: an object schema without
``x-kubernetes-preserve-unknown-fields`` accepts no field it does not name.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import SHARED

SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
# In the workspace's shared folder, found as tests/conftest.py finds it: <shared>/k8s/crds.
CRDS = SHARED / "k8s" / "crds"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
KUBERAY_GROUP = "ray.io/"


def kubectl() -> str | None:
    """The kubectl binary (it carries kustomize), or None."""
    return shutil.which("kubectl")


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    """Every object ``kubectl kustomize k8s/overlays/<overlay>`` renders, in order."""
    done = subprocess.run(
        [kubectl() or "kubectl", "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if done.returncode != 0:
        raise AssertionError(f"kustomize failed for {overlay}:\n{done.stderr}")
    return tuple(doc for doc in yaml.load_all(done.stdout, Loader=SafeLoader) if doc)


def of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    """The rendered objects of one kind."""
    return [doc for doc in docs if doc["kind"] == kind]


# --- strict CRD schemas --------------------------------------------------------------------------

# The API server validates a custom object's metadata as ObjectMeta; the CRD only says "object".
OBJECT_META = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "generateName": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def strict_schema(node: Any) -> Any:
    """A copy of an OpenAPI v3 (structural) schema that rejects every field it does not name."""
    if isinstance(node, list):
        return [strict_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict_schema(v) for k, v in node.items() if k not in ("nullable", "format")}
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]  # quantities and ports: 1, "1" and "500m" all valid
    elif node.get("nullable") and "type" in node:
        out["type"] = [node["type"], "null"]
    is_object = node.get("type") == "object" or "properties" in node
    open_ended = node.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in node
    if is_object and not open_ended:
        out["additionalProperties"] = False
    return out


@cache
def crd_validators() -> dict[tuple[str, str], Any]:
    """(apiVersion, kind) -> a jsonschema validator for every served version of the shared CRDs."""
    from jsonschema import Draft4Validator

    validators = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=SafeLoader)  # 1 MB each: the C loader if there is one
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = strict_schema(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            schema["properties"]["metadata"] = OBJECT_META
            schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind"})
            validators[(f"{group}/{version['name']}", kind)] = Draft4Validator(schema)
    return validators


def crd_errors(doc: dict[str, Any]) -> list[str]:
    """Schema problems of a KubeRay object, one line each with its path; empty when valid."""
    validator = crd_validators().get((doc.get("apiVersion"), doc.get("kind")))
    if validator is None:
        return [f"no CRD schema for {doc.get('apiVersion')} {doc.get('kind')} in {CRDS}"]
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors]


# --- pod templates inside KubeRay objects --------------------------------------------------------


def ray_cluster_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The RayCluster specs an object holds (a RayCluster, a RayJob's or a RayService's)."""
    spec = doc.get("spec", {})
    found = {
        "RayCluster": spec,
        "RayJob": spec.get("rayClusterSpec"),
        "RayService": spec.get("rayClusterConfig"),
    }.get(doc["kind"])
    return [found] if found else []


def pod_templates(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(role, pod template) for every pod a KubeRay object makes: heads, worker groups, submitter."""
    templates = []
    for cluster in ray_cluster_specs(doc):
        templates.append(("head", cluster["headGroupSpec"]["template"]))
        templates += [(group["groupName"], group["template"]) for group in cluster.get("workerGroupSpecs", [])]
    submitter = doc.get("spec", {}).get("submitterPodTemplate")
    if doc["kind"] == "RayJob" and submitter:
        templates.append(("submitter", submitter))
    return templates


def checkov_objects(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """What checkov can check for one rendered object.

    checkov knows no KubeRay kinds, so each pod template of a RayCluster, RayJob or RayService is
    written out as the Pod (or, for a RayJob's submitter, the Job) that KubeRay will create from it,
    keeping the template's metadata, where the checkov.io/skip annotations and their reasons live.
    """
    if not doc["apiVersion"].startswith(KUBERAY_GROUP):
        return [doc]
    objects = []
    for role, template in pod_templates(doc):
        metadata = copy.deepcopy(template.get("metadata", {}))
        metadata |= {"name": f"{doc['metadata']['name']}-{role}", "namespace": doc["metadata"]["namespace"]}
        if role == "submitter":
            job_spec = {"template": {"spec": template["spec"]}}
            objects.append({"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec})
        else:
            objects.append({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]})
    return objects
