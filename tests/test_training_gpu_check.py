"""The GPU check (`make gpu-check`) on a CPU with `--device cpu --tiny`: the train stage's own loop
(``themis.training.loop.train``) without Ray, stopped after a checkpoint and resumed, full and
LoRA, export reloaded by the transformers engine, generation and forced verdicts timed. The GPU
figures themselves need a GPU (docs/training.md, "The GPU check")."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "gpu" / "gpu_check.py"


@pytest.mark.integration  # no Ray, but four DeepSpeed starts in one process (~30-60 s on 2 cores)
def test_gpu_check_runs_every_part_on_cpu_without_ray():
    code = (
        "import runpy, sys\n"
        "sys.modules['ray'] = None  # importing Ray would fail: the check must not need it\n"
        "sys.argv = ['gpu_check', '--device', 'cpu', '--tiny', '--threads', '1']\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    )
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "PROBLEM" not in out.stdout
    for mode in ("full", "lora"):
        # Stopped after step 2's checkpoint, resumed there, the loss going on from it (checked by the script).
        assert f"tiny-{mode}: resumed at step 2: losses [" in out.stdout
        (line,) = re.findall(rf"^tiny-{mode}: ({{.*}})$", out.stdout, re.MULTILINE)
        part = json.loads(line)
        assert part["problems"] == [] and part["export_reloaded"] and part["tokens_per_s"] > 0
        assert part["engines_left"] == 0  # every DeepSpeed engine let go: on a GPU each holds its state
    result = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(result) == 1 and result == out.stdout.strip().splitlines()[-1:]
    fields = dict(kv.split("=", 1) for kv in result[0].split()[1:])
    assert fields["failed"] == "none" and fields["card"] == "cpu"
    for key in ("tiny_full_tokens_per_s", "tiny_lora_tokens_per_s", "tiny_generate_tokens_per_s"):
        assert float(fields[key]) > 0, key
    for key in ("tiny_bare_generate_tokens_per_s", "tiny_verdicts_single_tokens_per_s"):
        assert float(fields[key]) > 0, key
    assert float(fields["tiny_verdicts_pairwise_tokens_per_s"]) > 0 and float(fields["tiny_bare_over_engine"]) > 0
    assert fields["tiny_full_mfu"] == "None"  # no MFU without a GPU of known peak
