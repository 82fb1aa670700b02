"""Command line: ``themis pipeline CONFIG [key=value ...]`` or ``themis <stage> CONFIG [key=value ...]``.

The Ray job entry points (``python -m jobs.<stage> --config CONFIG``) call the same functions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from themis.config import STAGES, ConfigError, StorageConfig, load_config
from themis.dataplane.generation import EngineUnavailableError
from themis.storage import StorageError

# Errors that mean "fix your input": printed as one line, without a traceback.
USER_ERRORS = (ConfigError, FileNotFoundError, ValueError, KeyError, StorageError, EngineUnavailableError)


COMPARE_HELP = """\
also:
  themis evaluate compare A B   two evaluation reports (or two suite reports) side by side, with a
                                paired bootstrap when both were computed on the same items;
                                see `themis evaluate compare --help`
  themis ablation CONFIG        arms from the same judgments (e.g. random-N against IFD-N), each
                                trained and evaluated, then compared; see jobs/configs/ablation_cpu.yaml
  themis view RUN_ROOT          the run in the browser (stages, judgments, dataset, training,
                                evaluation); see `themis view --help`
"""


def build_parser(prog: str = "themis") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train, evaluate and serve LLM judges.",
        epilog=COMPARE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=("pipeline", *STAGES), help="the whole pipeline or one stage")
    parser.add_argument("config", help="a YAML job config, e.g. jobs/configs/demo.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. run.name=exp1")
    parser.add_argument(
        "--force",
        action="store_true",
        help="serve or pipeline: deploy a judge that fails the promotion gate (recorded in the manifest); "
        "the same as serve.promotion.force=true",
    )
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
    if argv[:1] == ["ablation"]:
        from themis.ablation import main as ablation_main

        return ablation_main(argv[1:])
    if argv[:1] == ["view"]:
        from themis.view.server import main as view_main

        return view_main(argv[1:])
    # Intermixed: `themis serve CONFIG --force k=v` keeps the overrides that follow a flag.
    args = build_parser().parse_intermixed_args(argv)
    overrides = [*args.overrides, "serve.promotion.force=true"] if args.force else args.overrides
    return execute(args.command, args.config, overrides)


def compare_main(argv: list[str]) -> int:
    """``themis evaluate compare A B``: two evaluation reports, or two suite reports, side by side as
    Markdown on stdout. Reports on the same items (equal item hashes, with units.parquet beside them)
    are compared by a paired bootstrap; otherwise by whether their intervals overlap. The output
    says which test it used."""
    from themis.config import StorageConfig

    parser = argparse.ArgumentParser(prog="themis evaluate compare", description=compare_main.__doc__)
    parser.add_argument("a", help="report.json or suite.json (local path or s3:// URI), or its folder")
    parser.add_argument("b", help="the report to compare against (the baseline of the relative gap)")
    parser.add_argument("--s3-endpoint", default=None, help="endpoint for S3-compatible servers")
    parser.add_argument("--out", default=None, help="also write the Markdown to this local file")
    args = parser.parse_args(argv)
    storage = StorageConfig(s3_endpoint=args.s3_endpoint)
    try:
        text = compare_text(args.a, args.b, storage)
    except (StorageError, ValueError, KeyError) as exc:
        print(f"themis: error: {exc}", file=sys.stderr)
        return 1
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def compare_text(a: str, b: str, storage: StorageConfig, names: tuple[str, str] | None = None) -> str:
    """The Markdown comparison of two reports (or two suites) at these paths; ``names`` label the
    two sides (default: the judges' names, which an ablation's arms share)."""
    from themis.evaluation import markdown

    (path_a, report_a), (path_b, report_b) = (_read_report(p, storage) for p in (a, b))
    names = names or (report_a["judge"]["name"], report_b["judge"]["name"])
    if "aggregate" in report_a or "aggregate" in report_b:
        if not ("aggregate" in report_a and "aggregate" in report_b):
            raise ValueError("compare two reports or two suite reports, not one of each")
        return markdown.compare_suites(
            report_a, report_b, *names, paired=_paired_suite(path_a, path_b, report_a, report_b, storage)
        )
    paired = None
    if report_a["benchmark"]["sha256"] == report_b["benchmark"]["sha256"]:
        paired = _paired(path_a, path_b, report_a, storage)
    return markdown.compare_reports(report_a, report_b, *names, paired=paired)


def _read_report(path: str, storage: StorageConfig) -> tuple[str, dict]:
    """A report's path and contents: the file itself, or a folder's report.json, else its suite.json."""
    from themis.storage import read_text_at

    if path.endswith(".json"):
        return path, json.loads(read_text_at(path, storage))
    folder = path.rstrip("/")
    try:
        return f"{folder}/report.json", json.loads(read_text_at(f"{folder}/report.json", storage))
    except StorageError:
        try:
            return f"{folder}/suite.json", json.loads(read_text_at(f"{folder}/suite.json", storage))
        except StorageError:
            raise StorageError(f"not found: {folder}/report.json (nor suite.json)") from None


def _paired(path_a: str, path_b: str, report_a: dict, storage: StorageConfig) -> dict | None:
    """Paired bootstrap differences from both reports' units.parquet; None if either is missing."""
    from themis.evaluation.paired import paired_differences
    from themis.evaluation.report import Settings

    try:
        units = [_read_units(p.rsplit("/", 1)[0] + "/units.parquet", storage) for p in (path_a, path_b)]
    except StorageError:
        return None
    return paired_differences(*units, Settings(**report_a["settings"]))


def _paired_suite(path_a: str, path_b: str, a: dict, b: dict, storage: StorageConfig) -> dict[str, dict]:
    """Per shared benchmark with the same items in both suites, paired bootstrap differences."""
    out = {}
    for bench, entry_a in a["benchmarks"].items():
        entry_b = b["benchmarks"].get(bench)
        if entry_b is None or entry_a["benchmark"]["sha256"] != entry_b["benchmark"]["sha256"]:
            continue
        reports = [
            _join(p.rsplit("/", 1)[0], e["folder"]) + "/report.json" for p, e in ((path_a, entry_a), (path_b, entry_b))
        ]
        paired = _paired(*reports, {"settings": entry_a["settings"]}, storage)
        if paired is not None:
            out[bench] = paired
    return out


def _join(folder: str, sub: str) -> str:
    return f"{folder}/{sub}" if sub else folder


def _read_units(uri: str, storage: StorageConfig) -> dict[str, list]:
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from themis.storage import build_filesystem

    fs, path = build_filesystem(storage.model_copy(update={"root": uri}))
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise StorageError(f"not found: {uri}")
    return pq.read_table(path, filesystem=fs).to_pydict()


def job_main(stage: str, argv: list[str] | None = None) -> int:
    """Entry point of ``python -m jobs.<stage> --config CONFIG [key=value ...]`` (for ``ray job submit``)."""
    parser = argparse.ArgumentParser(prog=f"python -m jobs.{stage}")
    parser.add_argument("--config", required=True, help="a YAML job config")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    return execute(stage, args.config, args.overrides)


if __name__ == "__main__":
    sys.exit(main())
