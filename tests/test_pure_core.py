"""The pure core imports no Ray, torch or DeepSpeed: checked in a fresh interpreter.

Every module of the pure packages is imported, found by walking them, so a new module is checked
without being listed. A few modules of mixed packages are pure at import time too (their heavy
imports sit inside the functions that need them) and are listed by name. The import-linter
contracts in pyproject.toml check the same packages statically, lazy imports included.
"""

import pkgutil
import subprocess
import sys
import tomllib
from importlib import import_module
from pathlib import Path

PURE_PACKAGES = ["themis.judge", "themis.curation", "themis.config", "themis.evaluation"]
PURE_MODULES = [
    "themis.redact",
    "themis.scratch",
    "themis.engines",
    "themis.engines.base",
    "themis.serving.guard",
    "themis.serving.promotion",
    "themis.serving.api",
    "themis.stages",
    "themis.training.plan",
    "themis.training.checkpoints",
    "themis.training.metrics",
    "themis.training.data",
    "themis.training.lora",
]
HEAVY = ["ray", "torch", "deepspeed", "vllm"]


def pure_modules() -> list[str]:
    """The pure packages, every module under them, and the individually pure modules."""
    found = []
    for name in PURE_PACKAGES:
        package = import_module(name)
        found.append(name)
        found += [m.name for m in pkgutil.walk_packages(package.__path__, prefix=f"{name}.")]
    return found + PURE_MODULES


def test_walk_finds_every_module_of_the_pure_packages() -> None:
    found = pure_modules()
    assert {"themis.judge.parsing", "themis.curation.sft", "themis.evaluation.metrics"} <= set(found)
    assert len(found) > 40


def test_pure_packages_match_the_import_contract() -> None:
    config = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    contracts = {c["id"]: c for c in config["tool"]["importlinter"]["contracts"]}
    assert sorted(contracts["pure-packages"]["source_modules"]) == sorted(PURE_PACKAGES)


def test_pure_modules_import_no_heavy_stack() -> None:
    code = (
        "import importlib, sys\n"
        f"for m in {pure_modules()!r}: importlib.import_module(m)\n"
        f"print([h for h in {HEAVY!r} if h in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
