"""infra/terraform, checked offline: fmt, init against a local provider mirror, validate, terraform
test with a mocked aws provider, and a real apply/destroy of the bucket module against moto's S3.

Modules that need the helm provider (not in the mirror) get fmt and the static checks below only.
Each module is copied to a temporary folder first, so no .terraform/ or state lands in the repo.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra" / "terraform"
MODULES = sorted(p for p in (INFRA / "modules").iterdir() if p.is_dir())
EXAMPLES = sorted(p for p in (INFRA / "examples").iterdir() if p.is_dir())
MIRROR = Path(os.environ.get("THEMIS_TF_PLUGIN_MIRROR", "/opt/tf-plugins"))
TERRAFORM = shutil.which("terraform")

needs_terraform = pytest.mark.skipif(
    TERRAFORM is None, reason="terraform is not installed (https://developer.hashicorp.com/terraform/install)"
)
needs_mirror = pytest.mark.skipif(
    not (MIRROR / "registry.terraform.io" / "hashicorp" / "aws").is_dir(),
    reason=f"no local provider mirror with hashicorp/aws at {MIRROR} (set THEMIS_TF_PLUGIN_MIRROR)",
)


def providers(folder: Path) -> set[str]:
    """The providers a module's required_providers names (hashicorp/<name>)."""
    text = "\n".join(p.read_text() for p in folder.glob("*.tf"))
    return set(re.findall(r'source\s*=\s*"hashicorp/([a-z0-9]+)"', text))


AWS_ONLY = [m for m in MODULES if providers(m) == {"aws"}]


@pytest.fixture(scope="session")
def tf_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for terraform: the filesystem mirror only (no network), a shared plugin cache.

    The cache is filled once here: terraform's cache is not safe for concurrent installs, and the
    moto apply below runs beside the other tests.
    """
    folder = tmp_path_factory.mktemp("terraform")
    cli_config = folder / "terraformrc"
    cli_config.write_text(
        f'provider_installation {{\n  filesystem_mirror {{\n    path = "{MIRROR}"\n  }}\n}}\n'
        f'plugin_cache_dir = "{folder / "plugin-cache"}"\n'
    )
    (folder / "plugin-cache").mkdir()
    env = dict(
        os.environ, TF_CLI_CONFIG_FILE=str(cli_config), TF_IN_AUTOMATION="1", TF_INPUT="0",
        CHECKPOINT_DISABLE="1", AWS_EC2_METADATA_DISABLED="true",
    )  # fmt: skip
    if TERRAFORM and (MIRROR / "registry.terraform.io").is_dir():
        warm = folder / "warm-cache"
        shutil.copytree(INFRA / "modules" / "s3_bucket", warm, ignore=shutil.ignore_patterns("tests"))
        tf(["init", "-backend=false"], warm, env)
    return env


def tf(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> str:
    """Run terraform; fail the test with its output when it exits non-zero."""
    done = subprocess.run(
        [TERRAFORM or "terraform", *args, "-no-color"], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"terraform {' '.join(args)} in {cwd}:\n{output[-6000:]}"
    return output


@needs_terraform
def test_fmt_check() -> None:
    done = subprocess.run(
        [TERRAFORM or "terraform", "fmt", "-check", "-recursive", "-diff", "-no-color", str(INFRA)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, f"run `terraform fmt -recursive infra/terraform`:\n{done.stdout}"


def test_every_aws_only_module_has_terraform_tests() -> None:
    assert {m.name for m in AWS_ONLY} == {"s3_bucket", "irsa_role", "eks"}
    for module in AWS_ONLY:
        assert list((module / "tests").glob("*.tftest.hcl")), f"{module.name} has no terraform test"


@needs_terraform
@needs_mirror
@pytest.mark.parametrize("module", AWS_ONLY, ids=lambda p: p.name)
def test_module_inits_validates_and_passes_its_terraform_tests(module: Path, tf_env, tmp_path: Path) -> None:
    work = tmp_path / module.name
    shutil.copytree(module, work)
    tf(["init", "-backend=false"], work, tf_env)
    tf(["validate"], work, tf_env)
    output = tf(["test"], work, tf_env)
    assert re.search(r"Success! \d+ passed, 0 failed", output), output


# --- the bucket module against a real S3 API ------------------------------------------------------

MOTO_ROOT = """
provider "aws" {{
  region                      = "us-east-1"
  access_key                  = "test"
  secret_key                  = "test"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  s3_use_path_style           = true

  endpoints {{
    s3 = "{endpoint}"
  }}
}}

module "bucket" {{
  source               = "{module}"
  name                 = "themis-runs-moto"
  checkpoint_run_names = ["cluster", "exp1"]
  force_destroy        = true
}}

output "storage_root" {{
  value = module.bucket.storage_root
}}
"""


@pytest.fixture(scope="module")
def bucket_on_moto(tf_env, tmp_path_factory: pytest.TempPathFactory):
    """moto's S3 on a free loopback port, and the bucket module being applied to it.

    The apply runs in a background thread: the aws provider waits about a minute for S3 lifecycle
    rules to read back steadily (it expects eventual consistency). Only the slow apply test uses
    it, so `make test-quick` (which leaves that test out) starts neither moto nor the apply.
    """
    if TERRAFORM is None or not (MIRROR / "registry.terraform.io").is_dir():
        yield None
        return
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    endpoint = "http://{}:{}".format(*server.get_host_and_port())
    work = tmp_path_factory.mktemp("bucket-on-moto")
    (work / "main.tf").write_text(MOTO_ROOT.format(endpoint=endpoint, module=INFRA / "modules" / "s3_bucket"))

    def apply() -> str:
        tf(["init", "-backend=false"], work, tf_env)
        return tf(["apply", "-auto-approve"], work, tf_env)

    with ThreadPoolExecutor(1) as pool:
        client = boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
            aws_secret_access_key="test",
        )  # fmt: skip
        yield {"applied": pool.submit(apply), "work": work, "s3": client}
    server.stop()


@pytest.mark.slow
@needs_terraform
@needs_mirror
def test_bucket_module_applies_and_destroys_against_moto(bucket_on_moto, tf_env) -> None:
    start = time.monotonic()
    bucket_on_moto["applied"].result(timeout=600)
    print(f"waited for apply: {time.monotonic() - start:.1f}s")
    s3, work, bucket = bucket_on_moto["s3"], bucket_on_moto["work"], "themis-runs-moto"
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    (rule,) = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert all(s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"].values())
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert rules["expire-checkpoints-cluster"]["Filter"]["Prefix"] == "runs/cluster/checkpoints/"
    assert rules["expire-checkpoints-cluster"]["Expiration"]["Days"] == 30
    assert "aws:SecureTransport" in s3.get_bucket_policy(Bucket=bucket)["Policy"]
    # moto enforces bucket policies: the TLS-only policy refuses this plain-HTTP write.
    with pytest.raises(s3.exceptions.ClientError, match="403|Forbidden|AccessDenied"):
        s3.put_object(Bucket=bucket, Key="runs/cluster/manifest.json", Body=b"{}")
    assert "s3://themis-runs-moto/runs" in tf(["output", "storage_root"], work, tf_env)

    start = time.monotonic()
    tf(["destroy", "-auto-approve", "-refresh=false"], work, tf_env)  # the state is a second old
    print(f"destroy: {time.monotonic() - start:.1f}s")
    assert bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


# --- static checks for what cannot be initialised offline (helm) ----------------------------------


def blocks(text: str, kind: str) -> dict[str, str]:
    """Top-level ``kind "label" ["label"] { ... }`` blocks: "label[.label]" -> body (brace-matched)."""
    found = {}
    for match in re.finditer(rf'^{kind} "([^"]+)"(?: "([^"]+)")? \{{\n', text, flags=re.M):
        depth, i = 1, match.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        name = ".".join(label for label in match.groups() if label)
        found[name] = text[match.end() : i - 1]
    return found


def module_interface(folder: Path) -> tuple[dict[str, bool], set[str]]:
    """(variable name -> required?, output names) of a module."""
    text = "\n".join(p.read_text() for p in folder.glob("*.tf"))
    variables = {name: "default" not in body for name, body in blocks(text, "variable").items()}
    return variables, set(blocks(text, "output"))


@pytest.mark.parametrize("folder", [*MODULES, *EXAMPLES], ids=lambda p: p.name)
def test_variables_and_outputs_are_typed_and_described(folder: Path) -> None:
    text = "\n".join(p.read_text() for p in folder.glob("*.tf"))
    for name, body in blocks(text, "variable").items():
        assert "description" in body and "type" in body, f"{folder.name}: variable {name}"
    for name, body in blocks(text, "output").items():
        assert "description" in body, f"{folder.name}: output {name}"
    assert re.search(r'required_version\s*=\s*">= 1\.7"', text), folder.name
    for provider in providers(folder):
        assert re.search(rf'source\s*=\s*"hashicorp/{provider}"\s*\n\s*version\s*=\s*"[^"]+"', text)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_calls_modules_with_their_real_interface(example: Path) -> None:
    text = "\n".join(p.read_text() for p in example.glob("*.tf"))
    calls = blocks(text, "module")
    assert calls
    for name, body in calls.items():
        source = re.search(r'source\s*=\s*"([^"]+)"', body).group(1)
        module = (example / source).resolve()
        assert module.is_dir(), f"module {name}: {source} does not exist"
        variables, outputs = module_interface(module)
        given = set(re.findall(r"^  ([a-z_]+)\s*=", body, flags=re.M)) - {"source", "depends_on", "providers"}
        assert given <= set(variables), f"module {name}: unknown inputs {given - set(variables)}"
        missing = {v for v, required in variables.items() if required} - given
        assert not missing, f"module {name}: required inputs not given {missing}"
        used = set(re.findall(rf"module\.{name}\.([a-z_]+)", text))
        assert used <= outputs, f"module.{name}: no such outputs {used - outputs}"


def test_helm_releases_pin_their_chart_versions_and_enable_the_features_the_manifests_use() -> None:
    texts = {p: p.read_text() for p in INFRA.rglob("*.tf")}
    releases = {f"{p.parent.name}/{n}": body for p, t in texts.items() for n, body in blocks(t, "resource").items()
                if n.startswith("helm_release")}  # fmt: skip
    assert releases, "no helm releases found"
    for name, body in releases.items():
        assert re.search(r"\bversion\s*=", body), f"{name} must pin its chart version"
    kuberay = (INFRA / "modules" / "kuberay" / "main.tf").read_text()
    manifests = "\n".join(p.read_text() for p in (ROOT / "k8s").rglob("*.yaml"))
    if "deletionRules" in manifests:
        assert '{ name = "RayJobDeletionPolicy", enabled = true }' in kuberay
    if "NewClusterWithIncrementalUpgrade" in manifests:
        assert '{ name = "RayServiceIncrementalUpgrade", enabled = true }' in kuberay
