"""Scratch folders (downloads, TensorBoard events, checkpoint staging) that never outlive their
process: one Themis scratch root, one folder per process tree in it, one per process in that.

Layout, under ``tempfile.gettempdir()`` (so ``TMPDIR`` moves it, as it moves every other temp file)::

    themis-scratch-<uid>/                  the root (0700, removed once empty)
        <host>_<pid>_<start>/              a process tree: named after the process that began it
            <host>_<pid>_<start>/          one process of that tree (its own, its Ray workers', ...)
                <prefix>XXXXXXXX/          a folder from scratch_dir() or scoped_scratch_dir()

Why a tree and not one flat folder per process: Ray workers, actors and serve replicas are killed
(SIGKILL), not exited, so their own exit hooks never run. The first process of a tree exports the
tree's folder in ``THEMIS_SCRATCH_TREE``; processes started under it (a local Ray's workers inherit
the driver's environment, training processes their worker's) put their folders inside it, and the
tree's first process removes, when it ends, its own folder and those of every process in the tree
that is dead or is its own descendant (a Ray it stopped). Its exit hook is registered when this
module is imported; ``themis.runtime`` imports it before it starts Ray and registers Ray's
shutdown, so (atexit being last in, first out) the hook runs after Ray has stopped.

Besides, every ``scratch_dir`` call sweeps the folders of processes that are dead (a whole tree
once its first process and all of its processes are), so a tree whose first process was killed is
reclaimed by the next Themis process on the node. A process is named by host, pid and start time:
a pid reused by a new process never keeps a dead one's folder alive, and a root shared by several
hosts (a host path) never has one host sweep another's live folders.

There is no Themis setting for the root: ``TMPDIR`` already moves it (a node whose ``/tmp`` is small
points TMPDIR at a large local disk), and one variable cannot disagree with itself.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import socket
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

TREE_ENV = "THEMIS_SCRATCH_TREE"
_NAME = re.compile(r"^(?P<host>[A-Za-z0-9.-]+)_(?P<pid>\d+)_(?P<start>\d+)$")
_lock = threading.Lock()
_hooked_pid: int | None = None  # the process whose signal handlers this module set
_trees: dict[tuple[int, Path], Path] = {}  # (pid, root) -> the tree that process joined or began


class ScratchError(RuntimeError):
    """The scratch root cannot be used safely; the message says why."""


def scratch_root() -> Path:
    """The Themis scratch root: ``<temp folder>/themis-scratch-<uid>``."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"themis-scratch-{uid}"


def scratch_dir(prefix: str) -> Path:
    """A new, empty folder ``<prefix>XXXXXXXX`` removed when this process ends (normal exit, an
    exception, SIGTERM or SIGHUP; or, when it is killed, by the tree's first process or a later
    sweep). Sweeps dead processes' folders first."""
    _check_prefix(prefix)
    _catch_signals()
    sweep()
    return Path(tempfile.mkdtemp(prefix=prefix, dir=_ensure_process_folder()))


@contextmanager
def scoped_scratch_dir(prefix: str) -> Iterator[Path]:
    """A scratch folder removed when the block ends, whether it succeeds or raises."""
    folder = scratch_dir(prefix)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def process_folder() -> Path:
    """This process's folder (which may not exist yet): every scratch folder it makes is inside."""
    return tree_folder() / _identity(os.getpid())


def tree_folder() -> Path:
    """The folder of this process's tree: the inherited one if it is on this host under this
    root and its first process lives, else this process's own (a new tree). Decided once per
    process and root, so a process whose tree's first process dies keeps its folder where it is."""
    key = (os.getpid(), scratch_root())
    with _lock:
        if key not in _trees:
            _trees[key] = _inherited_tree(key[1]) or key[1] / _identity(key[0])
        return _trees[key]


def _inherited_tree(root: Path) -> Path | None:
    inherited = os.environ.get(TREE_ENV)
    if not inherited:
        return None
    path = Path(inherited)
    match = _NAME.match(path.name)
    if path.parent == root and match and match["host"] == _host() and _is_alive(path.name):
        return path
    return None  # another root's or host's, or a tree whose first process died (swept at any moment)


def sweep() -> list[Path]:
    """Remove the folders of dead processes (and trees none of whose processes live); return them."""
    root = scratch_root()
    if not root.exists():
        return []
    _check_root(root)
    removed = []
    for tree in _children(root):
        if not _ours(tree.name):
            continue
        if _is_alive(tree.name):
            removed += [p for p in _children(tree) if _ours(p.name) and not _is_alive(p.name) and _rmtree(p)]
        elif not any(_is_alive(p.name) for p in _children(tree) if _NAME.match(p.name)) and _rmtree(tree):
            removed.append(tree)
    return removed


def _ensure_process_folder() -> Path:
    root, folder = scratch_root(), process_folder()
    for _ in range(5):  # another tree's first process may remove an empty root at any moment
        try:
            root.mkdir(mode=0o700, exist_ok=True)
            _check_root(root)
            folder.parent.mkdir(mode=0o700, exist_ok=True)
            folder.mkdir(mode=0o700, exist_ok=True)
            return folder
        except FileNotFoundError:
            continue
    raise ScratchError(f"cannot create {folder}: its parent keeps disappearing")


def _check_root(root: Path) -> None:
    """Refuse a root that is a link or someone else's (a predictable name in a shared /tmp)."""
    info = os.lstat(root)
    if not stat.S_ISDIR(info.st_mode) or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
        raise ScratchError(f"{root} is not a folder owned by this user; remove it or set TMPDIR elsewhere")


def _check_prefix(prefix: str) -> None:
    if not prefix or os.sep in prefix or (os.altsep and os.altsep in prefix) or prefix in (".", ".."):
        raise ScratchError(f"invalid scratch prefix {prefix!r}: a short name such as 'download-'")


def _identity(pid: int) -> str:
    """``<host>_<pid>_<start>``: the start time (in 1/100 s) tells a reused pid from its old owner."""
    return f"{_host()}_{pid}_{round(psutil.Process(pid).create_time() * 100)}"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "localhost"


def _ours(name: str) -> bool:
    match = _NAME.match(name)
    return match is not None and match["host"] == _host()


def _is_alive(name: str) -> bool:
    """Whether the process a folder is named after still runs (a zombie does not)."""
    match = _NAME.match(name)
    if not match or match["host"] != _host():
        return True  # another host's: never ours to judge
    try:
        proc = psutil.Process(int(match["pid"]))
        return round(proc.create_time() * 100) == int(match["start"]) and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # cannot tell (another user's process): keep its folder


def _children(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _rmtree(folder: Path) -> bool:
    shutil.rmtree(folder, ignore_errors=True)
    return not folder.exists()


def _clean_up_at_exit() -> None:
    """This process's folder; for a tree's first process, its whole tree but the folders of live
    processes it did not start (a detached server outlives it; a later sweep takes those)."""
    pid = os.getpid()
    try:
        mine = _identity(pid)
    except psutil.Error:
        return
    tree = tree_folder()
    if tree.name != mine:
        _rmtree(tree / mine)
        return
    descendants = {_identity_or_none(p) for p in psutil.Process(pid).children(recursive=True)}
    for folder in _children(tree):
        if folder.name == mine or folder.name in descendants or not _is_alive(folder.name):
            _rmtree(folder)
    try:
        tree.rmdir()  # only if empty: a live process of the tree keeps it
        scratch_root().rmdir()  # only if empty: other trees keep it
    except OSError:
        pass


def _identity_or_none(proc: Any) -> str | None:
    try:
        return _identity(proc.pid)
    except psutil.Error:
        return None


def _catch_signals() -> None:
    """Turn SIGTERM and SIGHUP into SystemExit (as themis.runtime does), so exit hooks run; only
    where nothing else handles them, and only from the main thread (the only one that may)."""
    global _hooked_pid
    with _lock:
        if _hooked_pid == os.getpid() or threading.current_thread() is not threading.main_thread():
            return
        _hooked_pid = os.getpid()
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) in (signal.SIG_DFL, None):
            signal.signal(signum, _exit_on_signal)


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through `finally` blocks and atexit


# Processes started from here (a local Ray's workers, subprocesses) join this process's tree.
os.environ[TREE_ENV] = str(tree_folder())
atexit.register(_clean_up_at_exit)
