"""One copy of each model per node: a content-addressed folder cache shared by every process there.

A model (or checkpoint) downloaded from an ``s3://`` run root lands here once per node; every
engine actor, Serve replica and driver on the node then reads the same folder, and a replica that
starts where the model already is downloads nothing. Entries are keyed by content (the export's
listing: every file's path, size and ETag; ``RunStore.local_dir`` computes it), so a re-exported
model is a new entry and two runs holding the same bytes share one.

Layout of the cache root (``cache_root``)::

    <key>/          a complete entry; it appears only by renaming a finished staging folder
    <key>.staging/  a download in progress (a killed one's leftover is removed by the next fetch)
    <key>.fetch     lock file: held exclusively by the one process downloading <key>; it holds
                    the bytes that download needs, so a concurrent eviction counts them
    <key>.use       lock file: held shared by every process that uses <key>, for that process's
                    life (a lock dies with its process, even under SIGKILL); its mtime is the
                    entry's last use
    .evict          lock file: one eviction at a time

Eviction keeps the cache under its size limit: least recently used entries first, never one that
a live process holds. Locks are ``fcntl.flock`` (Linux and macOS nodes); a lock file may be
removed only by a process holding it exclusively, and every locker checks that the file it locked
is still the one at that path. Files of an entry are made read-only: callers get the folder to
read, never to write.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from themis.config import StorageConfig

CACHE_ENV = "THEMIS_MODEL_CACHE"
LIMIT_ENV = "THEMIS_MODEL_CACHE_GB"
DEFAULT_LIMIT_GB = 50.0
GB = 1024**3

# fds of the ``.use`` locks this process holds, by path: one per entry, kept until release or exit.
_held: dict[str, int] = {}
_held_lock = threading.Lock()


class ModelCacheError(RuntimeError):
    """The cache cannot hold a model (too big for its limit, root not writable); the message says why."""


def cache_dir() -> Path:
    """Themis' cache folder (THEMIS_CACHE, else ~/.cache/themis)."""
    return Path(os.environ.get("THEMIS_CACHE", Path.home() / ".cache" / "themis")).expanduser()


def cache_root(storage: StorageConfig | None = None) -> Path:
    """The node's cache folder: ``storage.model_cache_dir``, else THEMIS_MODEL_CACHE, else
    ``<THEMIS_CACHE or ~/.cache/themis>/model-cache``; never the temp folder, which nodes clean."""
    configured = storage.model_cache_dir if storage else None
    return Path(configured or os.environ.get(CACHE_ENV) or cache_dir() / "model-cache").expanduser()


def cache_limit_bytes(storage: StorageConfig | None = None) -> int:
    """The size limit: ``storage.model_cache_gb``, else THEMIS_MODEL_CACHE_GB, else 50 GB."""
    gb = storage.model_cache_gb if storage and storage.model_cache_gb else None
    if gb is None:
        raw = os.environ.get(LIMIT_ENV)
        try:
            gb = float(raw) if raw else DEFAULT_LIMIT_GB
        except ValueError:
            raise ModelCacheError(f"{LIMIT_ENV}={raw!r} is not a number of GB") from None
        if gb <= 0:
            raise ModelCacheError(f"{LIMIT_ENV}={raw!r} must be above 0")
    return int(gb * GB)


def content_key(files: list[tuple[str, int, str]]) -> str:
    """The key of a folder from (relative path, size, ETag or other content tag) of each file."""
    blob = json.dumps(sorted(files), separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


class NodeModelCache:
    """The cache at ``root`` with a size limit; ``fetch`` is the only way in."""

    def __init__(self, root: Path, limit_bytes: int):
        self.root = Path(root)
        self.limit = limit_bytes
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ModelCacheError(f"cannot create the model cache {self.root}: {exc} (set {CACHE_ENV})") from None

    @classmethod
    def for_storage(cls, storage: StorageConfig | None = None) -> NodeModelCache:
        """The node's cache as ``storage`` (or the environment) configures it."""
        return cls(cache_root(storage), cache_limit_bytes(storage))

    def fetch(self, key: str, size: int, fill: Callable[[Path], None]) -> Path:
        """The entry ``key``, filled first by ``fill(staging_folder)`` (a download of ``size`` bytes)
        unless it is already on the node. Held in use by this process until ``release`` or exit."""
        _check_key(key)
        if size > self.limit:
            raise ModelCacheError(
                f"a model of {size / GB:.2f} GB does not fit the node's model cache at {self.root} "
                f"(limit {self.limit / GB:.2f} GB): raise run.storage.model_cache_gb or {LIMIT_ENV}"
            )
        entry = self.root / key
        while True:
            if entry.is_dir() and self._use(key):
                return entry
            fetch_file = self.root / f"{key}.fetch"
            fetch_fd = _lock(fetch_file, fcntl.LOCK_EX)  # waits while another process downloads it
            try:
                if entry.is_dir():  # that process finished it: use its copy
                    os.unlink(fetch_file)  # the lock file this process made after it was done
                    continue
                os.ftruncate(fetch_fd, 0)
                os.pwrite(fetch_fd, str(size).encode(), 0)
                self._make_room(size, key)
                self._download(key, fill)
                os.unlink(fetch_file)  # while held: a waiter finds it gone, locks afresh and sees the entry
                return entry
            finally:
                os.close(fetch_fd)

    def release(self, key: str) -> None:
        """Stop holding ``key`` in use in this process (it may then be evicted)."""
        with _held_lock:
            fd = _held.pop(str(self.root / f"{key}.use"), None)
        if fd is not None:
            os.close(fd)

    def entries(self) -> dict[str, int]:
        """Complete entries and their sizes in bytes."""
        return {p.name: _folder_bytes(p) for p in self.root.iterdir() if _is_key(p.name) and p.is_dir()}

    def _hold(self, key: str) -> None:
        """Hold ``key`` in use (a shared lock on ``<key>.use``, kept open) and mark it used now."""
        path = str(self.root / f"{key}.use")
        with _held_lock:
            if path not in _held:
                _held[path] = _lock(Path(path), fcntl.LOCK_SH)  # waits out an eviction in progress
        os.utime(path)

    def _use(self, key: str) -> bool:
        """Hold an existing entry in use; False if an eviction took it first."""
        self._hold(key)
        if (self.root / key).is_dir():
            return True
        self.release(key)
        return False

    def _download(self, key: str, fill: Callable[[Path], None]) -> None:
        """Fill a staging folder and rename it into place: the entry appears whole or not at all."""
        staging = self.root / f"{key}.staging"
        shutil.rmtree(staging, ignore_errors=True)  # a killed download's leftover
        staging.mkdir()
        try:
            fill(staging)
            _make_read_only(staging)
            self._hold(key)  # before the entry exists, so no eviction can take it first
            staging.rename(self.root / key)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            self.release(key)
            raise

    def _make_room(self, needed: int, fetching: str) -> None:
        """Evict least recently used entries no process holds until ``needed`` more bytes (and those
        of other downloads in progress) fit under the limit; say so if entries in use prevent it."""
        evict_fd = _lock(self.root / ".evict", fcntl.LOCK_EX)
        try:
            self._remove_leftovers(fetching)
            sizes = self.entries()
            total = sum(sizes.values()) + self._pending(fetching) + needed
            for key in sorted(sizes, key=self._last_used):
                if total <= self.limit:
                    break
                if self._evict(key):
                    total -= sizes[key]
            if total > self.limit:
                print(
                    f"themis: the model cache {self.root} will hold {total / GB:.2f} GB, over its limit of "
                    f"{self.limit / GB:.2f} GB, because the other models in it are in use",
                    file=sys.stderr,
                )
        finally:
            os.close(evict_fd)

    def _remove_leftovers(self, fetching: str) -> None:
        """Staging folders of downloads that died, and evicted folders whose removal was cut short."""
        for path in self.root.iterdir():
            if path.name.startswith(".evicted-"):
                shutil.rmtree(path, ignore_errors=True)
            elif (
                path.suffix == ".staging"
                and path.stem != fetching
                and not _locked_elsewhere(path.with_suffix(".fetch"))
            ):
                shutil.rmtree(path, ignore_errors=True)

    def _pending(self, fetching: str) -> int:
        """Bytes that other processes' downloads in progress will add (from their ``.fetch`` files)."""
        total = 0
        for fetch_file in self.root.glob("*.fetch"):
            if fetch_file.stem != fetching and _locked_elsewhere(fetch_file):
                try:
                    total += int(fetch_file.read_text() or 0)
                except (OSError, ValueError):
                    pass  # removed meanwhile (done), or not yet written
        return total

    def _last_used(self, key: str) -> float:
        try:
            return os.stat(self.root / f"{key}.use").st_mtime
        except FileNotFoundError:
            return 0.0

    def _evict(self, key: str) -> bool:
        """Remove ``key`` unless a process holds it; the folder leaves by a rename first, so no
        reader ever finds a half-deleted entry."""
        use = self.root / f"{key}.use"
        fd = os.open(use, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False  # in use
        try:
            doomed = self.root / f".evicted-{key}-{uuid.uuid4().hex[:8]}"
            (self.root / key).rename(doomed)
            os.unlink(use)
        finally:
            os.close(fd)
        shutil.rmtree(doomed, ignore_errors=True)
        return True


def _lock(path: Path, mode: int) -> int:
    """An fd of ``path`` (created if absent) locked with ``mode``, blocking until it is."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, mode)
        if _still_there(fd, path):
            return fd
        os.close(fd)  # removed or replaced while this process waited: lock the new one


def _locked_elsewhere(path: Path) -> bool:
    """Whether another lock holder has ``path`` exclusively (another process, or another fd here)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _still_there(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _make_read_only(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o444)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _is_key(name: str) -> bool:
    return len(name) == 32 and all(c in "0123456789abcdef" for c in name)


def _check_key(key: str) -> None:
    if not _is_key(key):
        raise ValueError(f"a model cache key is 32 hex digits (content_key), not {key!r}")
