"""Starting Ray and recording what ran: the thin shell shared by every stage.

Ray is started once per process. A job submitted with ``ray job submit`` (RAY_ADDRESS set) or a
config with ``ray.address: auto`` joins the cluster; otherwise a private local Ray starts on
loopback only, without usage stats. ``ray.profile: small_machine`` (the demo's, the benches') adds
the tuning a few-core box wants: the stage's workers ahead of Ray's own daemons for the CPU, one
OpenMP thread per process, fewer Parquet footer readers. A local Ray listens on loopback alone,
whatever the process imported before (``ray.serve`` at import time picks the host's address), and
is stopped when the process ends on a signal it can catch.
"""

from __future__ import annotations

import atexit
import importlib.metadata
import os
import platform
import signal
import sys
import threading
from typing import Any

import psutil

from themis import scratch  # noqa: F401  (before Ray starts: its processes join this one's scratch tree)
from themis.config import RayConfig
from themis.loopback import LOOPBACK, is_loopback

LOCAL_ENV = {
    # Keep everything on loopback; otherwise Ray binds the external address.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    # How often Ray Train's controller polls each worker (Ray's default, said explicitly). Every poll
    # is a task on the worker that takes the GIL from the training thread: at 0.2 s the train stage
    # ran 7-15% slower per step on 2 cores (make bench-train). The price: a checkpoint reported
    # within 2 s of the previous one waits for that one to be collected, and the end of a run is
    # seen up to 2 s late.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2.0",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "RAY_DEDUP_LOGS": "1",
}

# ray.profile=small_machine: tuning for a local Ray on a few cores (the demo, the benches), never a
# default. It leans on Ray's private knobs and process names, so it names the Ray it was checked
# with, and a test fails when Ray moves on, instead of the tuning silently doing nothing.
SMALL_MACHINE_RAY = "2.60.0"
SMALL_MACHINE_ENV = {
    "OMP_NUM_THREADS": "1",  # engines set their own thread counts; the rest must not fight them
    # Ray Data reads Parquet footers with up to 32 actors per read, each a worker process: on one
    # machine two do the job, without a dozen process starts per stage.
    "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "2",
}

# Ray reads this once, at `import ray`: on Linux it defaults to "1", and Ray then binds its GCS,
# raylet, agents and workers to the host's external address.
CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

# Ray starts its workers at nice 15 so that its daemons stay responsive on a busy node; on a small
# machine that lets each daemon wake-up preempt the stage's compute (the small_machine profile
# reverses it).
WORKER_NICENESS = "RAY_worker_niceness"
DAEMON_NICENESS = 10  # below the workers, but not starved: ~10% of a core against a busy worker

PACKAGES = ("themis-judge", "ray", "torch", "deepspeed", "transformers", "pyarrow", "pydantic", "scipy", "scikit-learn")


def init_ray(cfg: RayConfig) -> None:
    """Start or join Ray, unless this process already did."""
    address = os.environ.get("RAY_ADDRESS") or cfg.address
    if address == "local":
        for key, value in local_env(cfg).items():
            os.environ.setdefault(key, value)  # before `import ray`: Ray reads some of them at import
        os.environ[CLUSTER_SWITCH] = "0"  # a private Ray never takes the host's address, whoever asked
    import ray

    if ray.is_initialized():
        return
    if address == "local":
        _keep_on_loopback()
        _start_local(ray, cfg)
        _check_on_loopback(ray)
        _stop_on_exit(ray)
    else:
        # On a cluster the job's own runtime env (ray job submit, a RayJob) sets worker variables;
        # adding this laptop's settings would clash with it, and OMP_NUM_THREADS=1 would throttle the nodes' CPU work.
        ray.init(address=address)
    _quiet_ray_data()


def local_env(cfg: RayConfig) -> dict[str, str]:
    """The variables a private local Ray and its workers get: loopback and quiet always, the
    small-machine tuning when the config's profile asks for it."""
    return LOCAL_ENV | (SMALL_MACHINE_ENV if cfg.profile == "small_machine" else {})


def _start_local(ray: Any, cfg: RayConfig, attempts: int = 3) -> None:
    """A private local Ray. Ray gives its raylet a fixed 30 s to register, which a machine busy
    with other work can miss: start again before giving up."""
    workers_first = cfg.profile == "small_machine"
    if workers_first:
        os.environ.setdefault(WORKER_NICENESS, "0")  # read by the raylet it starts, for every worker
    for attempt in range(1, attempts + 1):
        before = {child.pid for child in psutil.Process().children()}
        try:
            ray.init(
                address="local",
                num_cpus=cfg.num_cpus,
                object_store_memory=cfg.object_store_memory_mb * 1024**2,
                include_dashboard=True,
                dashboard_host=LOOPBACK,
                runtime_env={
                    "env_vars": {k: os.environ[k] for k in (*local_env(cfg), CLUSTER_SWITCH)},
                    "worker_process_setup_hook": "themis.loopback.bind_grpc_servers_to_loopback",
                },
                log_to_driver=True,
            )
            if workers_first:
                _lower_ray_daemons(before)
            return
        except Exception as exc:
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            ray.shutdown()
            print(f"[themis] local Ray did not start in time (attempt {attempt} of {attempts}); starting it again")


def _keep_on_loopback() -> None:
    """Ray read RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it was first imported, maybe before this
    process set it (a module that imports ``ray.serve`` at import time, a user's script that
    imported Ray first); the value it read decides the node's address at ``ray.init``. Set the value
    Ray holds as well as the variable its own processes will read."""
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def _check_on_loopback(ray: Any) -> None:
    """Refuse to go on with a private Ray that took a non-loopback address (a Ray change that moved
    the switch above would otherwise open the control plane to the network without a word)."""
    address = ray.util.get_node_ip_address()
    if not is_loopback(address):
        ray.shutdown()
        raise RuntimeError(f"the local Ray started on {address}, not on loopback; refusing to run on it")


def _stop_on_exit(ray: Any) -> None:
    """Stop the private Ray when this process ends: on a normal exit (Ray's own atexit hook), and on
    SIGTERM or SIGHUP, which would otherwise end the process without running it and leave Ray's
    processes behind. A SIGKILL cannot be caught; Ray's daemons then exit with their parent where
    the kernel supports it."""
    atexit.register(ray.shutdown)
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set signal handlers
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if _replaceable(signal.getsignal(signum)):
            signal.signal(signum, _exit_on_signal)


def _replaceable(handler: Any) -> bool:
    """No handler, or the one ``ray.init`` sets for SIGTERM (``sys.exit``): Ray's core worker then
    installs its C++ crash handler over it, and a SIGTERM aborted the driver (rc 134) without
    running atexit. Setting ours again after ``ray.init`` puts a Python handler back in front."""
    return handler in (signal.SIG_DFL, None) or getattr(handler, "__module__", None) == "ray._private.worker"


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through `finally` blocks and atexit: Ray stops


def _lower_ray_daemons(children_before: set[int]) -> None:
    """Put the processes Ray just started for itself at nice DAEMON_NICENESS: every thread of the
    GCS, dashboard (its heads, forked later from threads set here, inherit it), log monitor,
    autoscaler monitor and the raylet's agents. Not the raylet: the workers it forks inherit its
    priority, and Ray only ever adds to it. Lowering one's own priority needs no privilege."""
    started = [p for p in psutil.Process().children() if p.pid not in children_before]
    for proc in _ray_daemons(started):
        lower_priority(proc)


def lower_priority(proc: Any, niceness: int = DAEMON_NICENESS) -> None:
    """Put every thread of ``proc`` at ``niceness`` at least (lowering one's own priority needs no
    privilege; a thread already nicer stays as it is)."""
    for thread_id in _thread_ids(proc):
        try:
            current = os.getpriority(os.PRIO_PROCESS, thread_id)
            os.setpriority(os.PRIO_PROCESS, thread_id, max(current, niceness))  # one thread on Linux
        except (ProcessLookupError, PermissionError):
            pass  # a thread that has just ended; priority is a speed matter, never a correctness one


def _ray_daemons(started: list[Any]) -> list[Any]:
    daemons = []
    for proc in started:
        try:
            if os.path.basename(proc.cmdline()[0]) == "raylet":
                daemons += [c for c in proc.children() if "agent" in " ".join(c.cmdline()).lower()]
            else:
                daemons += [proc, *proc.children(recursive=True)]
        except (psutil.Error, IndexError):
            continue  # a process that has just ended (or shows no command line)
    return daemons


def _thread_ids(proc: Any) -> list[int]:
    """Every thread of the process (Linux sets priority per thread), or the process (macOS)."""
    try:
        return [t.id for t in proc.threads()] if sys.platform.startswith("linux") else [proc.pid]
    except psutil.Error:
        return []


def _quiet_ray_data() -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = True
    ctx.print_on_execution_start = False


def package_versions() -> dict[str, Any]:
    """Versions of the packages that decide a run's results, for the manifest."""
    versions: dict[str, Any] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions
