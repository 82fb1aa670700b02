"""The Ray Train worker of the train stage: it supervises one training process and speaks for it
to Ray Train.

The training itself (``themis.training.loop``, DeepSpeed) runs in a child process that this worker
starts, not in the worker's own process. A Ray worker's core worker takes the GIL every 10 ms, and
each controller poll runs as a task on it; in the same process that stalls the training thread,
and the rank that stalls holds up every other rank at the next collective. Measured on 2 cores, the
same DeepSpeed loop ran 7-13% fewer milliseconds per step in a child than in the worker's thread.

What stays here is what only a Ray Train worker can do: the rank, the rendezvous address for the
children's own process group, the checkpoint Ray Train hands back on a restart, and
``ray.train.report`` for each checkpoint the child writes. A child that fails sends its traceback
and this worker raises it, so ``train.max_failures`` restarts the group as before; a worker that
dies takes its child with it (the child watches a pipe whose other end only this process holds).
The workers themselves never import torch, and once their child runs they drop to nice 10: they
only relay, and their core worker's wake-ups should not preempt the training.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from contextlib import nullcontext
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

from themis.runtime import lower_priority
from themis.storage import RunStore
from themis.training import checkpoints


def trainer(loop_config: dict[str, Any], scaling_config: Any, run_config: Any, loop: Any = None) -> Any:
    """Ray Train's data-parallel trainer running ``loop`` (``train_loop_per_worker`` unless a test
    gives another) on each worker. Not a TorchTrainer: its backend sets up a torch process group
    among the workers (and, on GPUs, a CUDA context in each), which only the children need; here
    the workers never import torch."""
    from ray.train.backend import Backend, BackendConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    class SharedDevices(Backend):
        # Each worker sees all the GPUs Ray gave this run's workers on its node, as under
        # TorchTrainer, so NCCL can reach its peers; a child picks its own by LOCAL_RANK.
        share_cuda_visible_devices = True

    class ChildProcesses(BackendConfig):
        @property
        def backend_cls(self) -> type:
            return SharedDevices

    return DataParallelTrainer(
        loop or train_loop_per_worker,
        train_loop_config=loop_config,
        backend_config=ChildProcesses(),
        scaling_config=scaling_config,
        run_config=run_config,
    )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Run this rank's training process to the end, relaying its checkpoints to Ray Train."""
    import ray.train
    from ray.train.collective import broadcast_from_rank_zero

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    # The children form their own process group; rank 0's worker picks its address.
    master = broadcast_from_rank_zero(_free_address() if rank == 0 else None)
    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else nullcontext(None) as folder:
        link = {"checkpoint": folder, "checkpoint_uri": checkpoint and checkpoint.path}
        _supervise(config, link, _child_env(ctx, master))


def _free_address() -> tuple[str, int]:
    """This node's address and a port free on it now (as torchrun picks one)."""
    import ray.util

    host = ray.util.get_node_ip_address()
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return host, s.getsockname()[1]


def _child_env(ctx: Any, master: tuple[str, int]) -> dict[str, str]:
    """torchrun's variables for the child, which ``deepspeed.init_distributed`` reads."""
    package_root = str(Path(__file__).resolve().parents[2])  # the child imports themis from here
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p),
        "MASTER_ADDR": master[0],
        "MASTER_PORT": str(master[1]),
        "RANK": str(ctx.get_world_rank()),
        "WORLD_SIZE": str(ctx.get_world_size()),
        "LOCAL_RANK": str(ctx.get_local_rank()),
        "LOCAL_WORLD_SIZE": str(ctx.get_local_world_size()),
        "NODE_RANK": str(ctx.get_node_rank()),
    }


def _supervise(config: dict[str, Any], link: dict[str, Any], env: dict[str, str]) -> None:
    """Start the child, hand it the config, serve its reports until it says done or dies."""
    ours, theirs = socket.socketpair()
    lifeline_read, lifeline_write = os.pipe()  # the write end stays here: its closing tells the child
    command = [sys.executable, "-m", "themis.training.loop", str(theirs.fileno()), str(lifeline_read)]
    child = subprocess.Popen(command, env=env, pass_fds=(theirs.fileno(), lifeline_read))
    theirs.close()
    os.close(lifeline_read)
    # From here this process only relays: its core worker's wake-ups should not preempt the child.
    lower_priority(psutil.Process())
    conn = Connection(ours.detach())
    try:
        conn.send((config, link))
        _relay(conn, child, env["RANK"], _checkpoint_uploader(config["store"]))
    finally:
        conn.close()
        if child.poll() is None:
            child.kill()
        child.wait()
        os.close(lifeline_write)


def _relay(conn: Connection, child: subprocess.Popen[bytes], rank: str, upload: Uploader | None) -> None:
    import ray.train

    while True:
        try:
            message = conn.recv()  # blocks in C, without the GIL
        except EOFError:
            code = child.wait()
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            raise RuntimeError(f"the training process of rank {rank} {how} before finishing") from None
        kind, *body = message
        if kind == "done":
            return
        if kind == "error":
            raise RuntimeError(f"the training process of rank {rank} failed:\n{body[0]}")
        metrics, folder, name = body
        try:
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(folder),
                checkpoint_dir_name=name,
                checkpoint_upload_fn=upload,
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        conn.send("reported")


Uploader = Callable[[Any, str], Any]  # (this rank's local Checkpoint, its folder name) -> the stored Checkpoint


def _checkpoint_uploader(store: RunStore) -> Uploader | None:
    """How this rank's checkpoint folder reaches the run's store: on an ``s3://`` root through
    ``themis.transfer`` (every file at once, big ones in parallel parts), as the exported model
    does, since Ray Train's own copy (``pyarrow.fs.copy_files``) writes each file as one sequence of
    1 MB parts. A local root keeps Ray's copy (None). Every rank uploads its own shards into the same
    folder, as Ray's copy does."""
    if store.is_local:
        return None

    def upload(checkpoint: Any, dir_name: str) -> Any:
        import ray.train

        from themis import transfer

        dest = store.path(checkpoints.FOLDER, ray.train.get_context().get_experiment_name(), dir_name)
        client = transfer.s3_client(store.storage)
        transfer.upload_folder(client, store.storage, Path(checkpoint.path), *transfer.split_path(dest))
        return ray.train.Checkpoint(dest, filesystem=store.fs)

    return upload
