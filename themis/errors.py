"""The errors that mean "fix your input": the command line prints them as one line, without a
traceback, and exits 1. Here rather than in ``themis.cli`` so that modules the CLI runs (the
ablation) can name them without importing the CLI."""

from __future__ import annotations

from themis.config import ConfigError
from themis.dataplane.ledger import EngineUnavailableError
from themis.storage import StorageError

USER_ERRORS = (ConfigError, FileNotFoundError, ValueError, KeyError, StorageError, EngineUnavailableError)
