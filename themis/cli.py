"""The command line: one parser, one subcommand for each thing a user runs (``themis --help``).

Every subcommand sets ``run``, the function that does its work; ``main`` parses, calls it, and
turns a user error (``themis.errors.USER_ERRORS``) into one line and exit code 1 (argparse's own
errors exit 2). Heavy modules (Ray, the stages, the view's scipy) are imported by the function
that needs them, so ``--help`` answers at once. The Ray job entry points
(``python -m jobs.<stage> --config CONFIG``) come in through ``job_main``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from themis.config import STAGES, StorageConfig, load_config
from themis.errors import USER_ERRORS
from themis.stages import REGISTRY

EXAMPLES = """\
examples:
  themis pipeline jobs/configs/demo.yaml           every stage of the config, in order
  themis train jobs/configs/demo.yaml run.name=x   one stage, with a config override
  themis evaluate compare A B   two evaluation reports (or two suite reports) side by side, with a
                                paired bootstrap when both were computed on the same items
  themis view runs/demo         the run in the browser

`themis COMMAND --help` says more about each command.
"""

FORCE_HELP = (
    "deploy a judge that fails the promotion gate (recorded in the manifest); the same as serve.promotion.force=true"
)


def _formatter(prog: str) -> argparse.HelpFormatter:
    """Help with room for the commands' one-line summaries."""
    return argparse.HelpFormatter(prog, max_help_position=24, width=100)


def _top_formatter(prog: str) -> argparse.HelpFormatter:
    """As ``_formatter``, and the examples keep their line breaks."""
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=18, width=100)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: ``themis`` and every subcommand."""
    parser = argparse.ArgumentParser(
        prog="themis",
        description="Train, evaluate and serve LLM judges.",
        epilog=EXAMPLES,
        formatter_class=_top_formatter,
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name in STAGES:
        if name == "evaluate":
            _add_evaluate(commands)
        else:
            _add_run(commands, name, REGISTRY[name].summary, _run_config, force=name == "serve")
    _add_run(commands, "pipeline", "every stage in the config's `stages`, in order", _run_config, force=True)
    ablation = _add_run(
        commands,
        "ablation",
        "arms trained from the same judgments, each evaluated, then compared",
        _run_ablation,
        example="jobs/configs/ablation_cpu.yaml",
    )
    ablation.description = (
        "Run the config's shared stages once, then every arm of its `ablation:` section (the same config "
        "with the arm's overrides), and write <run>/ablation/report.md and summary.json."
    )
    _add_promote(commands)
    _add_view(commands)
    return parser


def _add_run(
    commands: argparse._SubParsersAction,
    name: str,
    summary: str,
    run: Callable[[argparse.Namespace], int],
    force: bool = False,
    example: str = "jobs/configs/demo.yaml",
) -> argparse.ArgumentParser:
    """``themis NAME CONFIG [key=value ...]`` (and ``--force`` where it deploys)."""
    description = summary[:1].upper() + summary[1:] + "."
    sub = commands.add_parser(name, help=summary, description=description, formatter_class=_formatter)
    sub.add_argument("config", metavar="CONFIG", help=f"a YAML job config, e.g. {example}")
    sub.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. run.name=exp1")
    if force:
        sub.add_argument("--force", action="store_true", help=FORCE_HELP)
    sub.set_defaults(run=run, command=name, force=False)
    return sub


class _AnyWord(dict[str, argparse.ArgumentParser]):
    """Choices that hold every word (``_CompareOrConfig`` decides what a word means); help lists
    the subcommands' names, read from the live map as subcommands are added."""

    def __init__(self, names: dict[str, argparse.ArgumentParser]) -> None:
        super().__init__()
        self.names = names

    def __contains__(self, word: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)


class _CompareOrConfig(argparse._SubParsersAction):
    """After ``evaluate``: ``compare`` is a subcommand, any other word is the stage's CONFIG and the
    words after it its overrides. argparse has no default subcommand, so this action supplies one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # argparse checks the first word against the choices before it calls the action
        self.choices = _AnyWord(self._name_parser_map)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if values[0] in self._name_parser_map:
            super().__call__(parser, namespace, values, option_string)
            return
        rest = list(values[1:])
        if {"-h", "--help"} & set(rest):
            parser.print_help()
            parser.exit()
        flags = [word for word in rest if word.startswith("-")]
        if flags:
            parser.error(f"unrecognized arguments: {' '.join(flags)}")
        namespace.config, namespace.overrides = values[0], rest


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    """``themis evaluate CONFIG [key=value ...]`` runs the stage; ``themis evaluate compare A B`` compares."""
    summary = REGISTRY["evaluate"].summary
    evaluate = commands.add_parser(
        "evaluate",
        help=summary,
        usage="themis evaluate [-h] CONFIG [key=value ...]\n       themis evaluate compare [-h] A B [--out FILE] ...",
        description="Measure judges against labelled items (stage 6), or compare two reports.",
        formatter_class=_formatter,
    )
    evaluate.set_defaults(run=_run_config, command="evaluate", force=False)
    sub = evaluate.add_subparsers(
        action=_CompareOrConfig,
        title="arguments",
        metavar="CONFIG [key=value ...]",
        help="a YAML job config and its overrides: run the evaluate stage",
        required=True,
    )
    compare = sub.add_parser(
        "compare",
        prog="themis evaluate compare",
        formatter_class=_formatter,
        help="two reports (or two suite reports) side by side: themis evaluate compare A B",
        description="Two evaluation reports, or two suite reports, side by side as Markdown on stdout. Reports on "
        "the same items (equal item hashes, with units.parquet beside them) are compared by a paired bootstrap; "
        "otherwise by whether their intervals overlap. The output says which test it used.",
    )
    compare.add_argument("a", metavar="A", help="report.json or suite.json (local path or s3:// URI), or its folder")
    compare.add_argument("b", metavar="B", help="the report to compare against (the baseline of the relative gap)")
    compare.add_argument("--s3-endpoint", metavar="URL", help="endpoint for S3-compatible servers")
    compare.add_argument("--out", metavar="FILE", help="also write the Markdown to this local file")
    compare.set_defaults(run=_run_compare)


def _add_promote(commands: argparse._SubParsersAction) -> None:
    """``themis promote check CONFIG`` and ``themis promote force-rayservice`` (``make deploy-judge``)."""
    promote = commands.add_parser(
        "promote",
        help="the promotion gate before a RayService is applied (make deploy-judge)",
        description="The promotion gate of a job config (serve.promotion), run before anything is deployed.",
        formatter_class=_formatter,
    )
    sub = promote.add_subparsers(title="commands", metavar="COMMAND", required=True)
    check = sub.add_parser(
        "check",
        help="check a job config's model against its serve.promotion (exit 1 with the reason if refused)",
        description="Check a job config's model against its serve.promotion thresholds; exit 1 with the "
        "reason if the gate refuses it.",
        formatter_class=_formatter,
    )
    check.add_argument("config", metavar="CONFIG", help="a YAML job config, e.g. jobs/configs/cluster.yaml")
    check.add_argument("--storage-root", metavar="ROOT", help="the runs' storage root (run.storage.root)")
    check.add_argument("--force", action="store_true", help="pass the gate anyway and say so")
    check.set_defaults(run=_run_promote_check)
    force = sub.add_parser(
        "force-rayservice",
        help="mark the RayService in rendered manifests (stdin to stdout) as forced",
        description="Rendered manifests on stdin; on stdout the same with every judge application's "
        "force: true and a themis.dev/promotion-forced annotation on the RayService.",
        formatter_class=_formatter,
    )
    force.set_defaults(run=_run_force_rayservice)


def _add_view(commands: argparse._SubParsersAction) -> None:
    """``themis view RUN_ROOT``; the server itself is ``themis.view.server``."""
    view = commands.add_parser(
        "view",
        help="the run in the browser: stages, judgments, dataset, training, evaluation",
        description="Show a run in the browser: its stages, judgments, dataset, training and evaluation. "
        "Served from this machine (127.0.0.1 by default); --out writes the same page as static files.",
        formatter_class=_formatter,
    )
    view.add_argument(
        "run_root",
        metavar="RUN_ROOT",
        help="a run root: <run.storage.root>/<run.name>, e.g. runs/demo or s3://bucket/runs/demo",
    )
    view.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    view.add_argument("--port", type=int, default=None, help="port (default 8765, or a free one if taken)")
    view.add_argument("--no-browser", action="store_true", help="print the address; do not open a browser")
    view.add_argument(
        "--out", metavar="DIR", help="write the page as static files to this folder (local or s3://) and exit"
    )
    view.add_argument("--s3-endpoint", metavar="URL", help="endpoint for S3-compatible servers")
    view.set_defaults(run=_run_view)


def main(argv: list[str] | None = None) -> int:
    """``themis``: parse, run the subcommand; a user error prints one line and returns 1."""
    parser = build_parser()
    args, extras = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    # argparse stops filling a positional at the first flag: the key=value words after one
    # (`themis serve CONFIG --force k=v`) come back unparsed, and are overrides too.
    if extras and (not hasattr(args, "overrides") or any(word.startswith("-") for word in extras)):
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    if extras:
        args.overrides = [*args.overrides, *extras]
    try:
        return args.run(args)
    except USER_ERRORS as exc:
        print(f"themis: error: {exc}", file=sys.stderr)
        return 1


def job_main(stage: str, argv: list[str] | None = None) -> int:
    """``python -m jobs.<stage> --config CONFIG [key=value ...]`` (what ``ray job submit`` and the
    RayJobs run): the same as ``themis <stage> CONFIG [key=value ...]``."""
    parser = argparse.ArgumentParser(prog=f"python -m jobs.{stage}")
    parser.add_argument("--config", required=True, help="a YAML job config")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    return main([stage, args.config, *args.overrides])


def execute(command: str, config: str, overrides: list[str]) -> int:
    """Load the config and run the pipeline (``command == "pipeline"``) or one stage."""
    from themis import runner

    cfg = load_config(config, overrides)
    if command == "pipeline":
        runner.run_pipeline(cfg, [config, *overrides])
    else:
        runner.run_stage(command, cfg, **({"block": True} if command == "serve" else {}))
    return 0


def _run_config(args: argparse.Namespace) -> int:
    """A stage or the pipeline; ``--force`` is the override that forces the promotion gate."""
    overrides = [*args.overrides, "serve.promotion.force=true"] if args.force else list(args.overrides)
    return execute(args.command, args.config, overrides)


def _run_ablation(args: argparse.Namespace) -> int:
    from themis.ablation import run_ablation

    summary = run_ablation(load_config(args.config, args.overrides))
    print(summary["report"])
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    from themis.evaluation.compare import compare_text

    text = compare_text(args.a, args.b, StorageConfig(s3_endpoint=args.s3_endpoint))
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def _run_promote_check(args: argparse.Namespace) -> int:
    from themis.serving.promotion import check_promotion

    overrides = [f"run.storage.root={args.storage_root}"] if args.storage_root else []
    cfg = load_config(args.config, overrides + (["serve.promotion.force=true"] if args.force else []))
    decision = check_promotion(cfg.serve.promotion, cfg.run.storage, cfg.run.name)  # a refusal is a user error
    verdict = "forced past the gate" if decision["forced"] else "passed"
    print(f"promotion: {verdict}: {decision['compared']} (report: {decision['report']})")
    print(f"promotion: {json.dumps(decision)}")
    return 0


def _run_force_rayservice(args: argparse.Namespace) -> int:
    from themis.serving.promotion import force_rayservice

    sys.stdout.write(force_rayservice(sys.stdin.read()))
    return 0


def _run_view(args: argparse.Namespace) -> int:
    from themis.view.server import serve

    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
