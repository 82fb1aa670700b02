"""The pure core imports no Ray, torch or DeepSpeed: checked in a fresh interpreter."""

import subprocess
import sys

PURE = [
    "themis.config",
    "themis.prompts",
    "themis.parsing",
    "themis.judging",
    "themis.redact",
    "themis.filters",
    "themis.ifd",
    "themis.selection",
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
    "themis.serve_guard",
    "themis.promotion",
    "themis.ifd",
    "themis.selection",
    "themis.scenarios",
    "themis.scales",
    "themis.augment",
    "themis.engines",
    "themis.engines.base",
    "themis.sft",
    "themis.train_metrics",
    "themis.scratch",
    "themis.train_data",
    "themis.lora",
    "themis.judge_api",
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
