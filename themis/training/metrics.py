"""What a training run shows: TensorBoard scalars, MFU, and the loss-curve PNG. Pure at import
(no torch, Ray or DeepSpeed); tensorboardX and matplotlib load inside the functions that use them.

Rank 0 writes TensorBoard events to a local folder and copies them into the run root
(``train/tensorboard/``) at every checkpoint and at the end, so a run on ``s3://`` has them too and
a recovered run keeps the events of the attempt that died. The driver draws ``train/loss_curve.png``
from the step history in ``train/summary.json``.
"""

from __future__ import annotations

import io
import os
import shutil
import time
import uuid
from typing import Any

from themis.scratch import scratch_dir

TENSORBOARD = "train/tensorboard"
LOSS_CURVE = "train/loss_curve.png"

# Dense bf16 peak FLOP/s per device, from the vendors' datasheets (no sparsity). MFU is printed
# only for a device named here; substring match on torch.cuda.get_device_name().
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; the PCIe card is lower (756e12)
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A10G": 125e12,
    "A10": 125e12,
    "L40S": 362e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
}


def peak_bf16_flops(device_name: str) -> float | None:
    """The card's dense bf16 peak, or None for a device not in the table."""
    for key, flops in PEAK_BF16_FLOPS.items():
        if key in device_name:
            return flops
    return None


def mfu(n_params: int, tokens_per_s: float, peak_flops: float, n_devices: int = 1) -> float:
    """Model FLOPs utilisation: 6 FLOPs per parameter per token (forward + backward) over the
    devices' peak. Attention's extra FLOPs are left out, as in PaLM's definition for short sequences."""
    return 6 * n_params * tokens_per_s / (peak_flops * n_devices)


class TensorBoardLog:
    """A TensorBoard event file written on rank 0 (no-op elsewhere) and copied into the run.

    Written synchronously with tensorboardX's ``EventsWriter``, not its ``SummaryWriter``: that one
    hands each event to a writer thread through a multiprocessing queue (about 0.5 ms a step on
    rank 0, which the other ranks wait for at the next collective), and its ``flush`` does not wait
    for the queue, so the last steps before a copy were missing from the run's events.
    """

    def __init__(self, enabled: bool, store: Any, start_step: int):
        self.enabled, self.store = enabled, store
        if not enabled:
            return
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import SessionLog

        self.folder = str(scratch_dir("tb-"))  # removed when this process ends, however it ends
        # A name of its own: tensorboardX names files by the second, and an attempt's file must
        # never overwrite one an earlier attempt wrote in the same second.
        self.events = EventsWriter(os.path.join(self.folder, "events"), filename_suffix=f".{uuid.uuid4().hex[:8]}")
        if start_step:
            # TensorBoard's purge marker: a resumed run hides the events a dead attempt wrote past
            # its checkpoint (what SummaryWriter's purge_step writes).
            self._write(start_step, session_log=SessionLog(status=SessionLog.START))
        self._carry_over()

    def _carry_over(self) -> None:
        """Start from the published run's event files: publishing this attempt replaces the
        folder, and a resumed run's curves should still begin at step 1."""
        import pyarrow.fs as pafs

        src, dest = self.store.path(TENSORBOARD), self.store.write_path(TENSORBOARD)
        fs = self.store.fs
        if src == dest or fs.get_file_info(src).type != pafs.FileType.Directory:
            return  # a store without attempts, or no published events yet
        if fs.get_file_info(dest).type != pafs.FileType.NotFound:
            return  # a restarted worker group of this attempt: copied (and added to) already
        # copy_files writes into dest's folder without creating it on a local filesystem.
        fs.create_dir(dest, recursive=True)
        pafs.copy_files(src, dest, source_filesystem=fs, destination_filesystem=fs)

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        """Write one step's scalars (None values are skipped)."""
        if not self.enabled:
            return
        from tensorboardX.proto.summary_pb2 import Summary

        scalars = [Summary.Value(tag=tag, simple_value=v) for tag, v in values.items() if v is not None]
        self._write(step, summary=Summary(value=scalars))  # one event for all of a step's scalars

    def _write(self, step: int, **fields: Any) -> None:
        from tensorboardX.proto.event_pb2 import Event

        self.events.write_event(Event(wall_time=time.time(), step=step, **fields))

    def upload(self) -> None:
        """Copy the event files into ``train/tensorboard/`` of the run (adding, never deleting)."""
        if not self.enabled:
            return
        import pyarrow.fs as pafs

        self.events.flush()
        dest = self.store.write_path(TENSORBOARD)
        self.store.fs.create_dir(dest, recursive=True)
        pafs.copy_files(self.folder, dest, destination_filesystem=self.store.fs)

    def close(self) -> None:
        """Upload the last events and remove the local copy."""
        if self.enabled:
            self.upload()
            self.events.close()
            shutil.rmtree(self.folder, ignore_errors=True)  # the run holds the events now


def render_loss_curve(summary: dict[str, Any]) -> bytes:
    """A PNG of the training losses per step (total and both parts when they differ) and the
    validation loss at each evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = range(1, len(summary["train_loss"]) + 1)
    ax.plot(steps, summary["train_loss"], label="train (total)")
    if summary.get("loss_kind", "ce") != "ce":
        ax.plot(steps, summary["score_loss"], label="score/format CE", alpha=0.8)
        ax.plot(steps, summary["rationale_loss"], label=f"rationale {summary['loss_kind']}", alpha=0.8)
    val = [v for v in summary.get("val_loss") or [] if v["loss"] is not None]
    if val:
        ax.plot([v["step"] for v in val], [v["loss"] for v in val], "o-", label="validation CE")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("Training loss")
    ax.legend()
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
