"""A training run's checkpoints: save every rank's DeepSpeed shards plus the loop state, load them back.

A checkpoint is one folder in the run's store that merges every rank's DeepSpeed shards plus
``themis_state.json`` (step and loss history). Each rank writes its shards to a scratch folder that
its Ray Train worker reports (``themis.training.loop.WorkerLink``); Ray merges the ranks' folders
and hands the latest one back both when a worker dies mid-run (``train.max_failures``) and when the
stage is re-run, and ``restore`` continues from it. Imports no torch: the engine arrives built.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from themis.scratch import scratch_dir

# Where in the run Ray Train keeps them: <run>/checkpoints/<RUN_NAME>/<name(step)>/. The same run
# name on every attempt of the stage is what makes Ray Train V2 resume.
FOLDER, RUN_NAME = "checkpoints", "train"
STATE_FILE = "themis_state.json"
DS_TAG = "ds"  # a fixed DeepSpeed tag: one step per checkpoint folder, named by Ray
HISTORY = ("train_loss", "score_loss", "rationale_loss", "step_seconds")  # per-step lists in the state


def fresh_state(world: int) -> dict[str, Any]:
    """The loop state of a run that starts at step 0."""
    return {"step": 0, "val_loss": [], "world_size": world, **{k: [] for k in HISTORY}}


def restore(engine: Any, world: int, folder: str | None, uri: str | None) -> dict[str, Any]:
    """Load checkpoint ``folder`` (a local copy of ``uri``) into ``engine``; return the loop state.

    ``folder`` None is a fresh start. A checkpoint written by another number of ranks cannot be
    loaded (ZeRO partitions by rank): ValueError, naming the way out.
    """
    if folder is None:
        return fresh_state(world)
    state = json.loads((Path(folder) / STATE_FILE).read_text())
    if state["world_size"] != world:
        raise ValueError(
            f"checkpoint {uri} was written by {state['world_size']} workers, "
            f"this run has {world}: resume with the same train.num_workers or delete "
            "the checkpoints"
        )
    loaded, _ = engine.load_checkpoint(folder, tag=DS_TAG, load_lr_scheduler_states=False)
    if loaded is None:
        raise RuntimeError(f"DeepSpeed found no checkpoint in {uri}")
    return {k: [] for k in HISTORY} | state  # a checkpoint from before a history key existed


def save(engine: Any, state: dict[str, Any], rank: int) -> str:
    """Save this rank's shards (and, on rank 0, the loop state) to a new scratch folder; return it.

    The caller reports the folder, and the worker deletes it once reported; if saving fails the
    folder is removed here.
    """
    folder = str(scratch_dir("ckpt-"))
    try:
        engine.save_checkpoint(folder, tag=DS_TAG)
        if rank == 0:
            Path(folder, STATE_FILE).write_text(json.dumps(state))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def name(step: int) -> str:
    """The checkpoint's name for Ray Train (sorts by step)."""
    return f"step_{step:06d}"


def due(step: int, total: int, per_epoch: int, every: int) -> bool:
    """Whether to checkpoint after ``step``: every ``every`` steps, else once per epoch."""
    # Always at the last step, so a re-run with a larger max_steps resumes from the very end.
    return step == total or (step % every == 0 if every else step % per_epoch == 0)
