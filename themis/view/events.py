"""Scalars from TensorBoard event files, read without TensorBoard or TensorFlow. Pure: no Ray or torch.

The train stage writes ``train/tensorboard/events.out.tfevents.*`` with tensorboardX, whose package
imports torch on import, and TensorBoard's own reader comes with the tensorboard package (hundreds
of MB). The format is small and fixed, so it is read here: a TFRecord stream (a little-endian
uint64 length, a 4-byte CRC of it, the record, a 4-byte CRC of the record) of ``Event`` protobuf
messages, of which the viewer needs five fields:

    Event:      wall_time = 1 (double), step = 2 (int64), summary = 5, session_log = 7
    Summary:    value = 1 (repeated)
    Value:      tag = 1 (string), simple_value = 2 (float)
    SessionLog: status = 1 (enum; START = 1)

The CRCs are not checked (CRC-32C in Python would cost more than the parse); a record cut short,
as a file being written or a killed writer leaves it, ends that file's stream and is reported. A
``SessionLog START`` at step s is TensorBoard's purge marker (a resumed run writes it): the
events of earlier writes at steps >= s are dropped, as TensorBoard does.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

START = 1  # SessionLog.SessionStatus.START


@dataclass
class Scalars:
    """Per tag, (step, value) pairs in step order; ``notes`` says what could not be read."""

    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class _Event:
    wall_time: float = 0.0
    step: int = 0
    values: list[tuple[str, float]] = field(default_factory=list)
    purge: bool = False


def read_records(data: bytes) -> tuple[list[bytes], bool]:
    """The TFRecord payloads in ``data`` and whether the stream ended cleanly (not cut short)."""
    records: list[bytes] = []
    pos = 0
    while pos < len(data):
        if pos + 12 > len(data):
            return records, False
        (length,) = struct.unpack_from("<Q", data, pos)
        end = pos + 12 + length + 4
        if end > len(data):
            return records, False
        records.append(data[pos + 12 : pos + 12 + length])
        pos = end
    return records, True


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of one protobuf message: ints for varints, bytes for
    length-delimited fields, raw bytes for the fixed 32/64-bit ones."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _int(value: int | bytes) -> int:
    """A varint field's value; ValueError where the message has bytes in its place."""
    if not isinstance(value, int):
        raise ValueError("expected a varint field, found a length-delimited or fixed one")
    return value


def _raw(value: int | bytes) -> bytes:
    """A length-delimited or fixed field's bytes; ValueError where the message has a varint."""
    if not isinstance(value, bytes):
        raise ValueError("expected a length-delimited or fixed field, found a varint")
    return value


def parse_event(record: bytes) -> _Event:
    """One Event's time, step, simple scalar values and whether it is a purge marker."""
    event = _Event()
    for number, wire, value in _fields(record):
        if number == 1 and wire == 1:
            (event.wall_time,) = struct.unpack("<d", _raw(value))
        elif number == 2 and wire == 0:
            step = _int(value)
            event.step = step - (1 << 64) if step >= 1 << 63 else step
        elif number == 5 and wire == 2:
            event.values += _summary_values(_raw(value))
        elif number == 7 and wire == 2:
            event.purge = any(n == 1 and v == START for n, _, v in _fields(_raw(value)))
    return event


def _summary_values(summary: bytes) -> list[tuple[str, float]]:
    out = []
    for number, _, value in _fields(summary):
        if number != 1:
            continue
        tag, scalar = None, None
        for n, wire, v in _fields(_raw(value)):
            if n == 1 and wire == 2:
                tag = _raw(v).decode("utf-8", "replace")
            elif n == 2 and wire == 5:
                (scalar,) = struct.unpack("<f", _raw(v))
        if tag is not None and scalar is not None:
            out.append((tag, scalar))
    return out


def read_scalars(files: list[tuple[str, bytes]]) -> Scalars:
    """Every scalar series in these event files (name, contents), merged in the order they were
    written (by each file's first event time), with purge markers applied."""
    streams, notes = [], []
    for name, data in files:
        records, clean = read_records(data)
        if not clean:
            notes.append(f"{name}: the last record is cut short (a writer still running, or killed); read up to it")
        try:
            events = [parse_event(r) for r in records]
        except (ValueError, IndexError, struct.error) as exc:
            notes.append(f"{name}: not a TensorBoard event file ({exc}); skipped")
            continue
        if events:
            streams.append(events)
    streams.sort(key=lambda events: events[0].wall_time)
    points: dict[str, dict[int, float]] = {}
    for event in (e for events in streams for e in events):
        if event.purge:  # later writes replace everything from this step on
            for steps in points.values():
                for step in [s for s in steps if s >= event.step]:
                    del steps[step]
        for tag, value in event.values:
            points.setdefault(tag, {})[event.step] = value
    series = {tag: sorted(steps.items()) for tag, steps in sorted(points.items()) if steps}
    return Scalars(series=series, notes=notes)
