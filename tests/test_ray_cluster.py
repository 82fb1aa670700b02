"""ray_cluster/: image pins agree with pyproject, the runtime env and the VM cluster config are
what Ray accepts, and the Dockerfiles copy only what their build context holds."""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
RAY_CLUSTER = ROOT / "ray_cluster"


def pins(path: Path) -> dict[str, Requirement]:
    """name -> requirement of a requirements file (comments and -r lines skipped)."""
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    reqs = [Requirement(line) for line in lines if line and not line.startswith("-")]
    return {r.name.lower(): r for r in reqs}


def test_training_image_pins_every_pyproject_dependency_exactly_and_compatibly() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = pins(RAY_CLUSTER / "requirements-train.txt")
    for dep in map(Requirement, project):
        assert dep.name.lower() in pinned, f"{dep.name} from pyproject.toml is not pinned for the image"
        pin = pinned[dep.name.lower()]
        (spec,) = pin.specifier
        assert spec.operator == "==", f"{pin}: pin an exact version"
        assert dep.specifier.contains(spec.version, prereleases=True), f"{pin} does not satisfy {dep}"
        assert pin.extras >= dep.extras, f"{pin} lacks extras of {dep}"


def test_inference_image_adds_vllm_on_the_same_pins() -> None:
    text = (RAY_CLUSTER / "requirements-inference.txt").read_text()
    assert "-r requirements-train.txt" in text
    extra = pins(RAY_CLUSTER / "requirements-inference.txt")
    ray_version = str(next(iter(pins(RAY_CLUSTER / "requirements-train.txt")["ray"].specifier)).version)
    assert str(extra["ray"]) == f"ray[llm]=={ray_version}"
    assert str(extra["vllm"]) == "vllm==0.29.0"  # what ray[llm]==2.60.0 pins (CUDA build)


def test_dockerfiles_build_from_the_ray_image_as_a_non_root_user() -> None:
    ignored = (ROOT / ".dockerignore").read_text()
    for name in ("Dockerfile.train", "Dockerfile.inference"):
        text = (RAY_CLUSTER / name).read_text()
        assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py311-cu\d+$", text, flags=re.M), name
        assert "USER ray" in text and "WORKDIR /home/ray/themis" in text, name
        assert "pip install --no-cache-dir --no-deps -e ." in text, name
        # Everything COPY takes from the context is let through by .dockerignore.
        for source in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, flags=re.M):
            for path in source.split():
                allowed = path in ignored or path.startswith("ray_cluster/requirements-")
                assert allowed, f"{name} copies {path}, which .dockerignore leaves out"
    # The manifests start Ray where the image keeps the project (job entrypoints run there).
    manifests = "\n".join(p.read_text() for p in (ROOT / "k8s" / "base").glob("*.yaml"))
    assert set(re.findall(r"workingDir: (\S+)", manifests)) == {"/home/ray/themis"}


def test_runtime_env_is_a_valid_ray_runtime_env() -> None:
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((RAY_CLUSTER / "runtime_env.yaml").read_text())
    built = RuntimeEnv(**env, working_dir=".")  # `--working-dir .` adds this at submit time
    assert built.env_vars() == env["env_vars"]
    assert not {"pip", "conda", "uv"} & set(env), "packages come from the image, not job start"


def test_vm_cluster_config_is_what_ray_up_accepts() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((RAY_CLUSTER / "vms.yaml").read_text())
    prepared = prepare_config(copy.deepcopy(config))  # what `ray up` does before validating
    validate_config(prepared)
    assert config["docker"]["image"].split(":")[0].endswith("themis-train")
    starts = prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert prepared["max_workers"] == len(config["provider"]["worker_ips"])
