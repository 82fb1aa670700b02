"""Command line: ``themis pipeline CONFIG [key=value ...]`` or ``themis <stage> CONFIG [key=value ...]``.

The Ray job entry points (``python -m jobs.<stage> --config CONFIG``) call the same functions.
"""

from __future__ import annotations

import argparse
import sys

from themis.config import STAGES, ConfigError, load_config
from themis.generation import EngineUnavailableError
from themis.storage import StorageError

# Errors that mean "fix your input": printed as one line, without a traceback.
USER_ERRORS = (ConfigError, FileNotFoundError, ValueError, KeyError, StorageError, EngineUnavailableError)


def build_parser(prog: str = "themis") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Train, evaluate and serve LLM judges.")
    parser.add_argument("command", choices=("pipeline", *STAGES), help="the whole pipeline or one stage")
    parser.add_argument("config", help="a YAML job config, e.g. jobs/configs/demo.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. run.name=exp1")
    return parser


def execute(command: str, config: str, overrides: list[str]) -> int:
    """Load the config and run; a user error prints one clear message and returns 1."""
    from themis import runner

    try:
        cfg = load_config(config, overrides)
        if command == "pipeline":
            runner.run_pipeline(cfg)
        else:
            runner.run_stage(command, cfg, **({"block": True} if command == "serve" else {}))
    except USER_ERRORS as exc:
        print(f"themis: error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return execute(args.command, args.config, args.overrides)


def job_main(stage: str, argv: list[str] | None = None) -> int:
    """Entry point of ``python -m jobs.<stage> --config CONFIG [key=value ...]`` (for ``ray job submit``)."""
    parser = argparse.ArgumentParser(prog=f"python -m jobs.{stage}")
    parser.add_argument("--config", required=True, help="a YAML job config")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    return execute(stage, args.config, args.overrides)


if __name__ == "__main__":
    sys.exit(main())
