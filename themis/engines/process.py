"""An engine in a child process of its own, so the serving process never holds its GIL.

A transformers engine on CPU is Python-bound between its torch ops: in the judge replica it shared
one GIL with Ray Serve's request handling, FastAPI and the prompt checks, and ran ~20% slower
than alone. In a child process it runs as fast as alone while the replica handles HTTP. vLLM does
the same with its engine core process, which is why the vLLM path needs no wrapper.

The child also bounds a call: one that overruns ``call_timeout_s`` is killed with its process, its
requests come back with a ``deadline`` error, and the next call starts a fresh child. So a stuck
generation stops using the CPU instead of running on in a thread nobody waits for.

Requests and results travel pickled over two pipes (``multiprocessing.connection`` framing); the
child is ``python -m themis.engines.process``, not a ``multiprocessing`` spawn, because a Ray
worker's ``__main__`` must not be re-imported in the child. Pure standard library here: torch and
transformers load in the child only (and the tokenizer, for counting prompts, in the caller).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, cast

from themis.config import TransformersEngineConfig
from themis.engines.base import GenerationRequest, GenerationResult, render_chat_prompt

if TYPE_CHECKING:
    from themis.engines.hf import TransformersEngine

START_TIMEOUT_S = 600.0  # loading a large model from a slow disk
# A call still running this long after its deadline is killed with the child (generation itself
# stops at the deadline; this covers a single step that never returns).
KILL_MARGIN_S = 2.0


class EngineProcessError(RuntimeError):
    """The child could not start, or its engine raised: the error, as the child reported it."""


class EngineProcess:
    """A transformers engine run by a child process; ``generate`` as the engine's.

    Also what the judge endpoint needs in its own process: ``tokenizer`` and ``render_prompt``
    (counting prompt tokens) and ``max_model_len`` (the model's context).
    """

    def __init__(
        self,
        cfg: TransformersEngineConfig,
        model_path: str | Path,
        call_timeout_s: float | None = None,
        deadline_s: float | None = None,
    ):
        from transformers import AutoConfig, AutoTokenizer

        self.cfg, self.model_path = cfg, str(model_path)
        self.call_timeout_s, self.deadline_s = call_timeout_s, deadline_s
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.max_model_len = getattr(AutoConfig.from_pretrained(self.model_path), "max_position_embeddings", None)
        self.restarts = 0
        self._lock = threading.Lock()  # one call at a time: the pipes carry one conversation
        self._child: subprocess.Popen | None = None
        self._start()

    def set_deadline(self, seconds: float) -> None:
        """Stop generating after ``seconds`` (sent to the child's engine with the next call), and
        kill a call still running ``KILL_MARGIN_S`` later."""
        self.deadline_s, self.call_timeout_s = seconds, seconds + KILL_MARGIN_S

    def render_prompt(self, messages: list[dict[str, str]]) -> str:
        """The chat template applied, ready for the assistant's reply (as the engine renders it)."""
        return render_chat_prompt(self.tokenizer, messages)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """One result per request; a child that dies or overruns fails this call's rows only (and
        is replaced at the next call). An exception the engine raised is raised here."""
        with self._lock:
            if self._child is None or self._child.poll() is not None:
                self.restarts += 1
                self._start()
            try:
                self._send.send((list(requests), self.deadline_s))
                if not self._recv.poll(self.call_timeout_s):
                    self._stop()
                    return [GenerationResult(error="deadline: generation did not finish in time")] * len(requests)
                status, payload = self._recv.recv()
            except (EOFError, OSError) as exc:  # the child died mid-call (killed, out of memory)
                self._stop()
                return [GenerationResult(error=f"engine process died: {type(exc).__name__}")] * len(requests)
        if status != "ok":  # raised as the engine raised it, for the caller's own handling
            raise EngineProcessError(payload)
        return payload

    def close(self) -> None:
        with self._lock:
            self._stop()

    def __del__(self) -> None:
        self._stop()

    def _start(self) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        # The caller's import path, so the child finds themis wherever the caller did (a Ray
        # runtime env's working_dir included).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._child = subprocess.Popen(
            [sys.executable, "-m", "themis.engines.process", str(to_child_r), str(from_child_w)],
            pass_fds=(to_child_r, from_child_w),
            env=env,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._send = Connection(to_child_w, readable=False)
        self._recv = Connection(from_child_r, writable=False)
        self._send.send((self.cfg, self.model_path))
        if not self._recv.poll(START_TIMEOUT_S):
            self._stop()
            raise EngineProcessError(f"the engine process did not start within {START_TIMEOUT_S:.0f}s")
        try:
            status, detail = self._recv.recv()
        except EOFError:
            status, detail = "error", f"the engine process exited with {self._child.wait()}"
        if status != "ready":
            self._stop()
            raise EngineProcessError(f"the engine process could not start: {detail}")

    def _stop(self) -> None:
        child, self._child = getattr(self, "_child", None), None
        if child is None:
            return
        for conn in (getattr(self, "_send", None), getattr(self, "_recv", None)):
            if conn is not None:
                conn.close()
        child.kill()
        child.wait()


def _serve(recv: Connection, send: Connection) -> None:
    """The child: build the engine, then answer ``generate`` calls until the parent goes away."""
    cfg, model_path = recv.recv()
    try:
        from themis.engines import build_engine

        engine = cast("TransformersEngine", build_engine(cfg, model_path))  # cfg is a TransformersEngineConfig
    except Exception as exc:  # reported to the parent, which raises it where the replica starts
        send.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    send.send(("ready", None))
    applied_deadline = None
    while True:
        try:
            requests, deadline_s = recv.recv()
        except EOFError:  # the parent closed the pipe or died: nothing more to do
            return
        try:
            if deadline_s is not None and deadline_s != applied_deadline:
                engine.set_deadline(deadline_s)
                applied_deadline = deadline_s
            send.send(("ok", engine.generate(requests)))
        except Exception as exc:  # the engine's own handling missed it: the parent raises it
            send.send(("error", f"{type(exc).__name__}: {exc}"))


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
