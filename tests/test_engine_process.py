"""The transformers engine in a child process (what each judge replica runs), on the tiny model.

One child serves the module where a test does not need its own: each start costs seconds.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from themis.config import TransformersEngineConfig
from themis.engines import build_engine
from themis.engines.base import GenerationRequest
from themis.engines.process import EngineProcess, EngineProcessError

REQUESTS = [GenerationRequest(messages=[{"role": "user", "content": f"Rate {i}."}], max_tokens=6) for i in range(3)]


def _cfg(model: Path) -> TransformersEngineConfig:
    return TransformersEngineConfig(model=str(model), batch_size=4, num_threads=1)


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path):
    process = EngineProcess(_cfg(tiny_model_dir), tiny_model_dir, call_timeout_s=60, deadline_s=30)
    yield process
    process.close()


def test_child_generates_what_the_engine_generates_in_process(engine, tiny_model_dir):
    assert engine.generate(REQUESTS) == build_engine(_cfg(tiny_model_dir)).generate(REQUESTS)
    assert engine._child.pid != os.getpid()


def test_caller_side_facts_for_the_prompt_limits(engine, tiny_model_dir):
    in_process = build_engine(_cfg(tiny_model_dir))
    messages = REQUESTS[0].messages
    assert engine.render_prompt(messages) == in_process.render_prompt(messages)
    assert engine.max_model_len == in_process.model.config.max_position_embeddings == 4096
    assert engine.tokenizer.encode("Overall rating") == in_process.tokenizer.encode("Overall rating")


def test_an_engine_error_is_raised_in_the_caller_and_the_child_goes_on(engine):
    restarts = engine.restarts
    poisoned = GenerationRequest(messages=[{"role": "user", "content": "\udfff"}], max_tokens=4)
    with pytest.raises(EngineProcessError, match="TypeError"):
        engine.generate([poisoned])
    assert [r.ok for r in engine.generate(REQUESTS)] == [True] * 3
    assert engine.restarts == restarts


def test_a_killed_child_fails_its_call_and_is_replaced_at_the_next(engine):
    restarts = engine.restarts
    os.kill(engine._child.pid, signal.SIGKILL)
    engine._child.wait()
    assert all(r.ok for r in engine.generate(REQUESTS[:1]))
    assert engine.restarts == restarts + 1


def test_jam_a_call_past_its_timeout_is_killed_with_its_child(engine):
    pid, restarts, timeout = engine._child.pid, engine.restarts, engine.call_timeout_s
    engine.call_timeout_s = 0.001
    try:
        started = time.monotonic()
        results = engine.generate([GenerationRequest(messages=[{"role": "user", "content": "x"}], max_tokens=512)])
    finally:
        engine.call_timeout_s = timeout
    assert time.monotonic() - started < 5
    assert results[0].error.startswith("deadline")
    with pytest.raises(ProcessLookupError):  # the child is gone: it no longer uses the CPU
        os.kill(pid, 0)
    assert engine.generate(REQUESTS[:1])[0].ok and engine.restarts == restarts + 1


def test_a_child_that_cannot_start_says_why(tiny_model_dir, tmp_path):
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dir, no_weights)
    (no_weights / "model.safetensors").unlink()  # the caller's tokenizer and config still load
    with pytest.raises(EngineProcessError, match="could not start: OSError"):
        EngineProcess(_cfg(no_weights), no_weights)
