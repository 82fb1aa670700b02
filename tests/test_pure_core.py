"""The pure core imports no Ray, torch or DeepSpeed: checked in a fresh interpreter."""

import subprocess
import sys

PURE = [
    "themis.config",
    "themis.judge.prompts",
    "themis.judge.parsing",
    "themis.judge.call",
    "themis.redact",
    "themis.curation.filters",
    "themis.curation.ifd",
    "themis.curation.selection",
    "themis.evaluation.metrics",
    "themis.evaluation.stats",
    "themis.evaluation.benchmarks",
    "themis.evaluation.judges",
    "themis.evaluation.report",
    "themis.evaluation.markdown",
    "themis.evaluation.plots",
    "themis.evaluation.suite",
    "themis.evaluation.paired",
    "themis.evaluation.sources",
    "themis.evaluation.records",
    "themis.serving.guard",
    "themis.serving.promotion",
    "themis.curation.ifd",
    "themis.curation.selection",
    "themis.judge.scenarios",
    "themis.judge.scales",
    "themis.curation.augment",
    "themis.engines",
    "themis.engines.base",
    "themis.curation.sft",
    "themis.training.plan",
    "themis.training.checkpoints",
    "themis.training.metrics",
    "themis.scratch",
    "themis.training.data",
    "themis.training.lora",
    "themis.serving.api",
    "themis.stages",
]
HEAVY = ["ray", "torch", "deepspeed", "vllm"]


def test_pure_modules_import_no_heavy_stack() -> None:
    code = (
        "import importlib, sys\n"
        f"for m in {PURE!r}: importlib.import_module(m)\n"
        f"print([h for h in {HEAVY!r} if h in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
