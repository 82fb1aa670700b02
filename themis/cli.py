"""Command line: ``themis pipeline CONFIG [key=value ...]`` or ``themis <stage> CONFIG [key=value ...]``.

The Ray job entry points (``python -m jobs.<stage> --config CONFIG``) call the same functions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["evaluate", "compare"]:
        return compare_main(argv[2:])
    args = build_parser().parse_args(argv)
    return execute(args.command, args.config, args.overrides)


def compare_main(argv: list[str]) -> int:
    """``themis evaluate compare A B``: two evaluation reports side by side, as Markdown on stdout."""
    from themis.config import StorageConfig
    from themis.evaluation.markdown import compare_reports
    from themis.storage import read_text_at

    parser = argparse.ArgumentParser(prog="themis evaluate compare", description=compare_main.__doc__)
    parser.add_argument("a", help="report.json (local path or s3:// URI), or its folder")
    parser.add_argument("b", help="the report to compare against (the baseline of the relative gap)")
    parser.add_argument("--s3-endpoint", default=None, help="endpoint for S3-compatible servers")
    parser.add_argument("--out", default=None, help="also write the Markdown to this local file")
    args = parser.parse_args(argv)
    storage = StorageConfig(s3_endpoint=args.s3_endpoint)
    try:
        reports = [json.loads(read_text_at(_report_path(p), storage)) for p in (args.a, args.b)]
        text = compare_reports(*reports, name_a=reports[0]["judge"]["name"], name_b=reports[1]["judge"]["name"])
    except (StorageError, ValueError, KeyError) as exc:
        print(f"themis: error: {exc}", file=sys.stderr)
        return 1
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def _report_path(path: str) -> str:
    return path if path.endswith(".json") else path.rstrip("/") + "/report.json"


def job_main(stage: str, argv: list[str] | None = None) -> int:
    """Entry point of ``python -m jobs.<stage> --config CONFIG [key=value ...]`` (for ``ray job submit``)."""
    parser = argparse.ArgumentParser(prog=f"python -m jobs.{stage}")
    parser.add_argument("--config", required=True, help="a YAML job config")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    return execute(stage, args.config, args.overrides)


if __name__ == "__main__":
    sys.exit(main())
