"""Ray's known error-looking lines in a run that is going fine: held back, and shown if the run fails.

Ray 2.60 prints a few lines at error level on every local run, none of which says anything is
wrong with the run (see ``KNOWN``). A newcomer's first ``make demo`` should not open with them. They
are not silenced by a log level (that would hide Ray's real errors too): while a pipeline runs under
the ``small_machine`` profile, only lines matching ``KNOWN`` exactly are held back, everything else
passes through as it came, and if the run fails the held lines are printed after all, since a
failure is when a reader may want them.

Two layers, because the lines arrive two ways: Ray's log monitor prints its processes' lines
through ``sys.stderr`` in Python (and the raylet's error messages through ``sys.stdout``), and
the driver's own C++ core worker writes to file descriptor 2. The descriptor is routed through a
pipe (a pseudo-terminal when it was a terminal, so that progress bars and colours still see a
terminal) read by a thread; ``sys.stdout`` and ``sys.stderr`` are wrapped.
Partial lines (progress bars) pass through at once; only a complete known line is held back.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import sys
import termios
import threading
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Checked against Ray 2.60 (runtime.SMALL_MACHINE_RAY, which a test pins). Each says why it is noise.
KNOWN = (
    # Ray Data's actor pools pass their context and transformer as object refs and restart actors by
    # default; Ray warns about that combination for every pool (ray-project/ray#53727), as does Ray
    # Train's controller for its PreemptionWatcher. Our actors never need those refs after start.
    re.compile(
        r"core_worker\.cc:\d+: Actor with class name: '[^']*' and ID: '\w+' has constructor arguments in the "
        r"object store and max_restarts > 0\."
    ),
    # The GCS asks a worker that Ray Train has just ended to end its actor; the worker is gone already.
    re.compile(
        r"gcs_actor_scheduler\.cc:\d+: Failed to kill actor \w+, return status: Invalid: KillActor RPC "
        r"failed for actor \w+: RpcError: RPC error: Socket closed"
    ),
    # serve.shutdown() waits on graceful_shutdown until the controller kills itself: by design the
    # call never returns normally, and the raylet reports the killed call as a failed task.
    re.compile(
        r"Task ServeController\.graceful_shutdown failed\. There are infinite retries remaining, so the task "
        r"will be retried\. Error: The actor is dead because it was killed by `ray\.kill`\."
    ),
)


def is_known(line: str) -> bool:
    """Whether ``line`` is one of Ray's known harmless error-looking lines."""
    return any(p.search(line) for p in KNOWN)


@contextmanager
def hold_known_lines(enabled: bool = True) -> Iterator[list[str]]:
    """While the block runs, hold back Ray's known lines (``KNOWN``) from stderr; if it raises, print
    them before the error propagates. Yields the list of held lines."""
    held: list[str] = []
    if not enabled:
        yield held
        return
    out, err = _TextFilter(sys.stdout, held), _TextFilter(sys.stderr, held)
    fd = _FdFilter(2, held)
    sys.stderr.flush()
    fd.start()
    sys.stdout, sys.stderr = out, err
    try:
        yield held
    except BaseException:
        _stop(out, err, fd)
        if held:
            print(f"[themis] Ray printed these {len(held)} line(s) during the run:", file=sys.stderr)
            print("\n".join(held), file=sys.stderr, flush=True)
        raise
    _stop(out, err, fd)


def _stop(out: _TextFilter, err: _TextFilter, fd: _FdFilter) -> None:
    out.flush_all()
    err.flush_all()
    if sys.stdout is out:
        sys.stdout = out.target
    if sys.stderr is err:
        sys.stderr = err.target
    fd.stop()


class _TextFilter(io.TextIOBase):
    """``sys.stderr`` without the known lines: complete lines are checked, a partial line passes
    through on flush (a progress bar), unless it already is a known line waiting for its newline."""

    def __init__(self, target: Any, held: list[str]):
        self.target, self.held, self.pending = target, held, ""
        self.lock = threading.Lock()  # Ray's log thread prints beside the main thread

    def write(self, s: str) -> int:
        with self.lock:
            *lines, self.pending = (self.pending + s).split("\n")
            out = []
            for line in lines:
                if is_known(line):
                    self.held.append(line)
                else:
                    out.append(line + "\n")
            if out:
                self.target.write("".join(out))
        return len(s)

    def flush(self) -> None:
        with self.lock:
            if self.pending and not is_known(self.pending):
                self.target.write(self.pending)
                self.pending = ""
        self.target.flush()

    def flush_all(self) -> None:
        if self.pending:
            self.write("\n")  # the last line, even without its newline, is checked like the others
        self.target.flush()

    def isatty(self) -> bool:
        return self.target.isatty()

    def fileno(self) -> int:
        return self.target.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)  # encoding, errors, buffer: as the stream it wraps


class _FdFilter:
    """A file descriptor (2) routed through a thread that drops the known lines."""

    def __init__(self, fd: int, held: list[str]):
        self.fd, self.held = fd, held
        self.saved: int | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.saved = os.dup(self.fd)
        read_end, write_end = _terminal_like(self.saved) if os.isatty(self.saved) else os.pipe()
        os.dup2(write_end, self.fd)
        os.close(write_end)
        self.thread = threading.Thread(target=self._pump, args=(read_end, self.saved), daemon=True)
        self.thread.start()

    def _pump(self, read_end: int, out: int) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(read_end, 65536)
            except OSError:  # a pseudo-terminal's reader gets EIO once every writer closed it
                chunk = b""
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            kept = []
            for line in lines:
                if is_known(line.decode(errors="replace")):
                    self.held.append(line.decode(errors="replace"))
                else:
                    kept.append(line + b"\n")
            if pending and not is_known(pending.decode(errors="replace")):
                kept.append(pending)
                pending = b""
            _write_all(out, b"".join(kept))
        _write_all(out, pending)
        os.close(read_end)

    def stop(self) -> None:
        if self.saved is None:
            return
        os.dup2(self.saved, self.fd)  # closes the pipe's write end: the thread reads to the end
        if self.thread is not None:
            # A process started meanwhile may hold the pipe open; then the thread writes on through
            # the saved descriptor, which stays open for it.
            self.thread.join(timeout=2)
            if not self.thread.is_alive():
                os.close(self.saved)
        self.saved = None


def _terminal_like(terminal: int) -> tuple[int, int]:
    """A pseudo-terminal (reader, writer) of the terminal's size, passing bytes as written (the
    real terminal does its own line handling)."""
    read_end, write_end = pty.openpty()
    tty.setraw(write_end)
    fcntl.ioctl(write_end, termios.TIOCSWINSZ, fcntl.ioctl(terminal, termios.TIOCGWINSZ, b"\0" * 8))
    return read_end, write_end


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]
