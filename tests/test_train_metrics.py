"""What a training run shows: TensorBoard events read back from the run's store."""

from __future__ import annotations

import struct
from pathlib import Path

from themis.config import StorageConfig
from themis.storage import RunStore
from themis.training.metrics import TENSORBOARD, TensorBoardLog


def _records(path: Path) -> list[bytes]:
    """The records of a TFRecord file: length (8 bytes), its CRC (4), data, the data's CRC (4)."""
    blob, records, at = path.read_bytes(), [], 0
    while at < len(blob):
        (length,) = struct.unpack("<Q", blob[at : at + 8])
        records.append(blob[at + 12 : at + 12 + length])
        at += 12 + length + 4
    return records


def _scalars(folder: Path) -> dict[tuple[int, str], float]:
    from tensorboardX.proto.event_pb2 import Event

    seen = {}
    for path in folder.glob("events.out.tfevents*"):
        for record in _records(path):
            event = Event.FromString(record)
            for value in event.summary.value:
                seen[(event.step, value.tag)] = value.simple_value
    return seen


def test_tensorboard_log_writes_every_scalar_of_each_step_to_the_run(tmp_path):
    store = RunStore(StorageConfig(root=str(tmp_path / "runs")), "r")
    log = TensorBoardLog(True, store, 0)
    log.scalars(1, {"loss/total": 2.5, "lr": 1e-3, "throughput/mfu": None})
    log.scalars(2, {"loss/total": 2.0, "lr": 2e-3, "throughput/mfu": None})
    log.close()
    assert not Path(log.folder).exists()  # the local copy (scratch) goes once the run has the events
    seen = _scalars(Path(store.read_path(TENSORBOARD)))
    assert seen.keys() == {(1, "loss/total"), (1, "lr"), (2, "loss/total"), (2, "lr")}  # None is skipped
    assert seen[(2, "loss/total")] == 2.0 and abs(seen[(1, "lr")] - 1e-3) < 1e-9


def test_tensorboard_log_is_silent_off_rank_zero(tmp_path):
    store = RunStore(StorageConfig(root=str(tmp_path / "runs")), "r")
    log = TensorBoardLog(False, store, 0)
    log.scalars(1, {"loss/total": 2.5})
    log.close()
    assert not store.exists(TENSORBOARD)


def test_tensorboard_log_of_a_resumed_run_marks_the_purge_step(tmp_path):
    """TensorBoard hides the events a dead attempt wrote after the step a resumed run starts from."""
    from tensorboardX.proto.event_pb2 import Event, SessionLog

    store = RunStore(StorageConfig(root=str(tmp_path / "runs")), "r")
    log = TensorBoardLog(True, store, 7)
    log.scalars(8, {"loss/total": 1.0})
    log.close()
    (path,) = Path(store.read_path(TENSORBOARD)).glob("events.out.tfevents*")
    events = [Event.FromString(r) for r in _records(path)]
    assert events[0].file_version == "brain.Event:2"
    assert (events[1].step, events[1].session_log.status) == (7, SessionLog.START)
    assert (events[2].step, events[2].summary.value[0].tag) == (8, "loss/total")


def _attempt_log(store: RunStore, start_step: int, step: int) -> None:
    """One train attempt's TensorBoard log on rank 0, published as the stage does on success."""
    attempt = store.begin_attempt("train")
    log = TensorBoardLog(True, attempt, start_step)
    log.scalars(step, {"loss/total": float(step)})
    log.close()
    attempt.mark_written(TENSORBOARD)
    attempt.publish()


def test_rerun_finished_tensorboard_log_carries_the_published_events_into_the_new_attempt(tmp_path):
    """A rerun on a finished run (``make demo`` twice) starts from the published events: the
    first run's curve stays and the rerun's own file joins it."""
    store = RunStore(StorageConfig(root=str(tmp_path / "runs")), "r")
    _attempt_log(store, 0, 1)
    _attempt_log(store, 1, 2)  # resumed at step 1: its curve continues the first one's
    _attempt_log(store, 2, 2)  # rerun when already done: no new step
    folder = Path(store.read_path(TENSORBOARD))
    assert len(list(folder.glob("events.out.tfevents*"))) == 3
    assert _scalars(folder) == {(1, "loss/total"): 1.0, (2, "loss/total"): 2.0}
    attempts = tmp_path / "runs" / "r" / "_attempts"
    assert not attempts.exists() or not any(attempts.iterdir())  # every attempt published
