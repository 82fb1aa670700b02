"""The GPU check script's code path on a CPU (`--device cpu --tiny`): it runs without Ray, builds
under ZeRO-3, and reports every phase. The GPU figures themselves need a GPU (README, Training)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "gpu" / "gpu_check.py"


@pytest.mark.integration  # no Ray, but a DeepSpeed start-up per phase (~20-60 s in all)
def test_gpu_check_runs_its_phases_on_cpu_without_ray():
    code = (
        "import runpy, sys\n"
        "sys.modules['ray'] = None  # importing Ray would fail: the check must not need it\n"
        f"sys.argv = ['gpu_check', '--device', 'cpu', '--tiny', '--steps', '3', '--batch', '2', '--seq', '32']\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    )
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    for phase in ("full-ce", "multi-objective", "lora+multi-objective"):
        assert f"{phase}: step 3 " in out.stdout
    result = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert result and "tokens_per_s=" in result[0] and "lora_multi_objective_tokens_per_s=" in result[0]
