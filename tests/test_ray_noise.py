"""Ray's known error-looking lines are held back while a pipeline runs, and shown if it fails;
every other line, a real error or a progress bar, passes through."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from themis.ray_noise import is_known

# As a successful `make demo` printed them (Ray 2.60), colour codes included.
DRIVER = (
    "[2026-12-05 17:25:25,348 E 8053 8053] core_worker.cc:2465: Actor with class name: "
    "'MapWorker(MapBatches(EngineActor))' and ID: 'f678a59215e74f489e151da301000000' has constructor arguments in "
    "the object store and max_restarts > 0. If the arguments in the object store go out of scope or are lost, the "
    "actor restart will fail. See https://github.com/ray-project/ray/issues/53727 for more details."
)
MONITOR = [
    "\x1b[36m(pid=gcs_server)\x1b[0m [2026-12-05 17:30:47,069 E 8056 8056] (gcs_server) gcs_actor_scheduler.cc:538: "
    "Failed to kill actor 8de97cd720be00d915da7f8c01000000, return status: Invalid: KillActor RPC failed for actor "
    "8de97cd720be00d915da7f8c01000000: RpcError: RPC error: Socket closed rpc_code: 14",
    "\x1b[36m(TrainController pid=11933)\x1b[0m [2026-12-05 17:30:53,606 E 11933 11961] core_worker.cc:2465: Actor "
    "with class name: 'PreemptionWatcher' and ID: 'ed36030efb72e1ae30ef13ed01000000' has constructor arguments in "
    "the object store and max_restarts > 0. If the arguments in the object store go out of scope or are lost, the "
    "actor restart will fail. See https://github.com/ray-project/ray/issues/53727 for more details.",
    "\x1b[33m(raylet)\x1b[0m Task ServeController.graceful_shutdown failed. There are infinite retries remaining, so "
    "the task will be retried. Error: The actor is dead because it was killed by `ray.kill`.",
]
REAL = [
    "[2026-12-05 17:30:47,069 E 8056 8056] (gcs_server) gcs_actor_scheduler.cc:538: Failed to kill actor 8de9, "
    "return status: Invalid: KillActor RPC failed for actor 8de9: RpcError: RPC error: Deadline Exceeded",
    "\x1b[33m(raylet)\x1b[0m Task EngineActor.__call__ failed. Error: The actor died unexpectedly",
    "core_worker.cc:900: Unhandled error (suppress with 'RAY_IGNORE_UNHANDLED_ERRORS=1'): OutOfMemoryError",
]

SCRIPT = """
import os, sys
from themis.ray_noise import hold_known_lines
DRIVER, MONITOR, REAL, FAIL = {args}
with hold_known_lines():
    os.write(2, (DRIVER + "\\n" + REAL[0] + "\\n").encode())  # the C++ core worker writes to fd 2
    for line in MONITOR[:2] + REAL[1:]:
        print(line, file=sys.stderr)  # Ray's log monitor prints through sys.stderr
    print(MONITOR[2])  # and the raylet's error messages through sys.stdout
    sys.stderr.write("\\rprogress 50%")  # a progress bar: no newline, flushed
    sys.stderr.flush()
    if FAIL:
        raise SystemExit("stage failed")
print("after", file=sys.stderr)
"""


def run(fail: bool) -> str:
    code = SCRIPT.replace("{args}", repr((DRIVER, MONITOR, REAL, fail)))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


def test_the_lines_a_successful_demo_printed_are_known_and_real_errors_are_not():
    assert all(is_known(line) for line in [DRIVER, *MONITOR])
    assert not any(is_known(line) for line in REAL)


@pytest.mark.parametrize("fail", [False, True])
def test_known_lines_are_held_back_and_shown_when_the_run_fails(fail):
    err = run(fail)
    for line in REAL:
        assert line in err  # a real error always passes, in a run that ends well or not
    assert "progress 50%" in err
    if fail:
        assert "Ray printed these 4 line(s) during the run" in err and "stage failed" in err
        assert all(line in err for line in [DRIVER, *MONITOR])
    else:
        assert not any(is_known(line) for line in err.splitlines()), err
        assert err.rstrip().endswith("after")
