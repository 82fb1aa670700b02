"""Scratch folders never outlive their process: normal exit, an exception, SIGTERM, a killed
process (swept), a killed or lingering descendant (removed by the tree's first process), a block."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from themis import scratch

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != scratch.TREE_ENV}
    return {**env, "TMPDIR": str(tmp), "PYTHONPATH": str(ROOT), **extra}


def _start(code: str, tmp: Path, **extra: str) -> subprocess.Popen:
    """A Python child whose temp folder is ``tmp``; it prints each scratch folder it makes."""
    prelude = "import sys, time, os\nfrom themis.scratch import scratch_dir\n"
    return subprocess.Popen(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        env=_env(tmp, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _folder_of(child: subprocess.Popen) -> Path:
    folder = Path(child.stdout.readline().strip())
    assert folder.is_dir() and (folder / "data").is_file(), folder
    return folder


MAKE = "d = scratch_dir('work-'); (d / 'data').write_text('x'); print(d, flush=True)\n"


@pytest.fixture
def tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh temp folder, for children and for this process's own scratch calls."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_removed_at_normal_exit(tmp: Path) -> None:
    child = _start(MAKE, tmp)
    folder = _folder_of(child)
    assert folder.is_relative_to(tmp / f"themis-scratch-{os.getuid()}")
    assert child.wait(timeout=30) == 0, child.stderr.read()
    assert list(tmp.iterdir()) == []  # the folder, the tree and the root: nothing is left


def test_removed_at_exception_exit(tmp: Path) -> None:
    child = _start(MAKE + "raise RuntimeError('boom')\n", tmp)
    _folder_of(child)
    assert child.wait(timeout=30) == 1
    assert "boom" in child.stderr.read()
    assert list(tmp.iterdir()) == []


def test_removed_at_sigterm(tmp: Path) -> None:
    child = _start(MAKE + "time.sleep(60)\n", tmp)
    _folder_of(child)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == 128 + signal.SIGTERM
    assert list(tmp.iterdir()) == []


def test_scoped_folder_removed_on_success_and_on_failure(tmp: Path) -> None:
    with scratch.scoped_scratch_dir("block-") as folder:
        (folder / "f").write_text("x")
        assert folder.name.startswith("block-") and folder.parent == scratch.process_folder()
    assert not folder.exists()
    with pytest.raises(ValueError), scratch.scoped_scratch_dir("block-") as failed:
        raise ValueError("inside the block")
    assert not failed.exists()
    assert list(scratch.process_folder().iterdir()) == []


def test_killed_process_is_swept(tmp: Path) -> None:
    """A process killed outright (its own hooks never run) loses its tree at the next sweep."""
    child = _start(MAKE + "os.kill(os.getpid(), 9)\n", tmp)
    dead = _folder_of(child)
    assert child.wait(timeout=30) == -signal.SIGKILL
    assert dead.exists()  # left behind: nothing ran at its death
    mine = scratch.scratch_dir("mine-")  # this process's first scratch call sweeps
    assert not dead.exists() and not dead.parent.parent.exists()
    assert mine.is_dir()


def test_dead_member_of_live_tree_is_swept_and_live_one_kept(tmp: Path) -> None:
    tree = str(scratch.tree_folder())  # this process begins the tree; its children join it
    alive = _start(MAKE + "time.sleep(60)\n", tmp, THEMIS_SCRATCH_TREE=tree)
    try:
        live_folder = _folder_of(alive)
        killed = _start(MAKE + "os.kill(os.getpid(), 9)\n", tmp, THEMIS_SCRATCH_TREE=tree)
        dead_folder = _folder_of(killed)
        killed.wait(timeout=30)
        assert dead_folder.parent.parent == live_folder.parent.parent == Path(tree)
        assert scratch.sweep() == [dead_folder.parent]
        assert not dead_folder.exists() and live_folder.exists()
    finally:
        alive.kill()
        alive.wait()


def test_reused_pid_does_not_keep_a_dead_folder(tmp: Path) -> None:
    """A folder named after this very pid but an earlier start time belongs to a dead process."""
    host, pid, start = scratch.process_folder().name.rsplit("_", 2)
    stale = scratch.tree_folder() / f"{host}_{pid}_{int(start) - 500}"
    stale.mkdir(parents=True)
    scratch.scratch_dir("x-")
    assert not stale.exists()


def test_first_process_removes_killed_and_lingering_descendants(tmp: Path) -> None:
    """Ray's workers die by SIGKILL, or a moment after their driver: the tree's first process
    removes their folders when it ends, whether they are dead or still alive."""
    code = """
    import subprocess
    from pathlib import Path
    scratch_dir('driver-')
    make = "from themis.scratch import scratch_dir; print(scratch_dir('w-'), flush=True); import os, time; "
    def start(end):
        kid = subprocess.Popen([sys.executable, '-c', make + end], stdout=subprocess.PIPE, text=True)
        return kid, Path(kid.stdout.readline().strip())
    lingering, its_folder = start("time.sleep(60)")
    killed, dead_folder = start("os.kill(os.getpid(), 9)")  # started last: no sweep runs after it
    killed.wait()
    print(lingering.pid, its_folder.is_dir(), dead_folder.is_dir(), flush=True)
    """
    child = _start(code, tmp)
    lingering_pid, *folders_there = child.stdout.readline().split()
    try:
        assert folders_there == ["True", "True"]  # both still there when the first process ends
        assert child.wait(timeout=30) == 0, child.stderr.read()
        assert list(tmp.iterdir()) == []
    finally:
        os.kill(int(lingering_pid), signal.SIGKILL)


def test_another_roots_tree_is_not_joined(tmp: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A child given another temp folder starts its own tree there (and so cleans it up itself)."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    child = _start(MAKE, elsewhere, THEMIS_SCRATCH_TREE=str(scratch.tree_folder()))
    assert _folder_of(child).is_relative_to(elsewhere)
    assert child.wait(timeout=30) == 0
    assert list(elsewhere.iterdir()) == []


def test_root_that_is_a_link_is_refused(tmp: Path) -> None:
    target = tmp / "someone-elses"
    target.mkdir()
    scratch.scratch_root().symlink_to(target)
    with pytest.raises(scratch.ScratchError, match="not a folder owned by this user"):
        scratch.scratch_dir("x-")


@pytest.mark.parametrize("prefix", ["", "a/b", ".."])
def test_bad_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(scratch.ScratchError, match="invalid scratch prefix"):
        scratch.scratch_dir(prefix)
