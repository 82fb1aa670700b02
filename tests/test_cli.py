"""The command line: one parser whose --help lists every command, the evaluate stage beside
`evaluate compare`, clear errors, the Ray job entry points, and the stage registry."""

from __future__ import annotations

import ast
import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from themis import cli
from themis.config import STAGES
from themis.stages import REGISTRY, get_stage

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [*STAGES, "pipeline", "ablation", "promote", "view"]


@pytest.fixture
def executed(monkeypatch) -> dict:
    """What ``cli.execute`` was asked to run, instead of running it."""
    seen: dict = {}
    monkeypatch.setattr(
        cli,
        "execute",
        lambda command, config, overrides: seen.update(command=command, config=config, overrides=overrides) or 0,
    )
    return seen


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit:
        cli.main([*argv, "--help"])
    assert exit.value.code == 0
    return capsys.readouterr().out


def test_help_lists_every_command_with_a_summary(capsys) -> None:
    out = _help([], capsys)
    listed = {line.split()[0]: line for line in out.splitlines() if line.startswith("    ") and line.strip()}
    assert set(COMMANDS) <= set(listed)
    for name in COMMANDS:  # a one-line summary beside the name (or on the next line, for long names)
        assert len(listed[name].split()) > 1 or name == "instructions"
    assert REGISTRY["instructions"].summary in out


@pytest.mark.parametrize(
    "argv",
    [[c] for c in COMMANDS] + [["evaluate", "compare"], ["promote", "check"], ["promote", "force-rayservice"]],
    ids=lambda argv: " ".join(argv),
)
def test_every_command_has_help(argv: list[str], capsys) -> None:
    assert f"usage: themis {' '.join(argv)}" in _help(argv, capsys)


def test_evaluate_runs_the_stage_and_evaluate_compare_compares(executed, capsys) -> None:
    assert cli.main(["evaluate", "job.yaml", "run.name=x", "evaluate.plots=false"]) == 0
    assert executed == {
        "command": "evaluate",
        "config": "job.yaml",
        "overrides": ["run.name=x", "evaluate.plots=false"],
    }
    assert "CONFIG [key=value ...]" in _help(["evaluate"], capsys)
    assert "usage: themis evaluate compare" in _help(["evaluate", "compare"], capsys)
    assert "usage: themis evaluate " in _help(["evaluate", "job.yaml"], capsys)
    with pytest.raises(SystemExit) as exit:
        cli.main(["evaluate", "job.yaml", "--force"])  # only serve and pipeline deploy
    assert exit.value.code == 2 and "unrecognized arguments: --force" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit:
        cli.main(["evaluate", "compare", "only-one"])
    assert exit.value.code == 2 and "required: B" in capsys.readouterr().err


def test_stages_and_pipeline_take_overrides_and_force(executed) -> None:
    for name in (*STAGES, "pipeline"):
        assert cli.main([name, "job.yaml", "a=1"]) == 0
        assert executed == {"command": name, "config": "job.yaml", "overrides": ["a=1"]}
    assert cli.main(["pipeline", "job.yaml", "a=1", "--force", "b=2"]) == 0
    assert executed["overrides"] == ["a=1", "b=2", "serve.promotion.force=true"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bogus"], "invalid choice: 'bogus'"),
        ([], "required: COMMAND"),
        (["train"], "required: CONFIG"),
        (["evaluate"], "required: CONFIG [key=value ...]"),
        (["ablation"], "required: CONFIG"),
        (["promote"], "required: COMMAND"),
        (["view"], "required: RUN_ROOT"),
        (["train", "job.yaml", "--force"], "unrecognized arguments: --force"),
        (["view", "runs/x", "extra"], "unrecognized arguments: extra"),
    ],
)
def test_bad_command_lines_exit_2_with_usage(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and message in err and err.startswith("usage: themis")


@pytest.mark.parametrize("command", ["train", "evaluate", "ablation", "pipeline", "serve"])
def test_missing_config_file_is_one_line(command: str, tmp_path: Path, capsys) -> None:
    assert cli.main([command, str(tmp_path / "missing.yaml")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("themis: error: config file not found") and err.count("\n") == 1


def test_promote_check_of_a_missing_config_is_one_line(tmp_path: Path, capsys) -> None:
    assert cli.main(["promote", "check", str(tmp_path / "missing.yaml")]) == 1
    assert capsys.readouterr().err.startswith("themis: error: config file not found")


def test_promote_force_rayservice_marks_the_rayservice(monkeypatch, capsys) -> None:
    serve_config = {"applications": [{"name": "judge", "import_path": "themis.serving.app:build_judge_app"}]}
    manifests = yaml.safe_dump_all(
        [
            {"kind": "ConfigMap", "metadata": {"name": "c"}},
            {"kind": "RayService", "metadata": {"name": "j"}, "spec": {"serveConfigV2": yaml.safe_dump(serve_config)}},
        ]
    )
    monkeypatch.setattr(sys, "stdin", io.StringIO(manifests))
    assert cli.main(["promote", "force-rayservice"]) == 0
    config_map, service = yaml.safe_load_all(capsys.readouterr().out)
    assert config_map == {"kind": "ConfigMap", "metadata": {"name": "c"}}
    assert service["metadata"]["annotations"] == {"themis.dev/promotion-forced": "true"}
    assert yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"] == {"force": True}


def test_job_entry_points_run_the_same_command(executed) -> None:
    assert cli.job_main("train", ["--config", "jobs/configs/cluster.yaml", "run.storage.root=s3://b/runs"]) == 0
    assert executed == {
        "command": "train",
        "config": "jobs/configs/cluster.yaml",
        "overrides": ["run.storage.root=s3://b/runs"],
    }
    for stage in (*STAGES, "pipeline"):  # every job module calls job_main with its own name
        tree = ast.parse((ROOT / "jobs" / f"{stage}.py").read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "job_main"]
        assert [c.args[0].value for c in calls] == [stage]


def test_view_port_help_matches_the_server(capsys) -> None:
    from themis.view.server import DEFAULT_PORT

    assert f"default {DEFAULT_PORT}," in _help(["view"], capsys)


def test_stage_registry_names_every_stage() -> None:
    assert tuple(REGISTRY) == STAGES
    for name, stage in REGISTRY.items():
        spec = importlib.util.find_spec(stage.module)  # found without importing it (most import Ray)
        assert spec is not None and Path(spec.origin).name == f"{name}.py"
    with pytest.raises(ValueError, match="unknown stage 'trian'; stages: instructions, responses"):
        get_stage("trian")


def _source(module: str) -> Path | None:
    """The file of a themis module, found without importing it; None for a name that is not a module."""
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(module: str) -> set[str]:
    """Every themis module that ``module`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(_source(module).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("themis"):
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("themis")}
    return {m for m in found if _source(m) is not None}


def test_no_import_cycle_through_the_command_line() -> None:
    """The CLI imports the ablation and the comparison; neither of them, nor anything they import
    (even lazily, inside a function), leads back to the CLI."""
    seen, todo = set(), ["themis.ablation", "themis.evaluation.compare", "themis.errors"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += _imports(module)
    assert "themis.cli" not in seen
    assert {"themis.ablation", "themis.evaluation.compare", "themis.errors"} <= _imports("themis.cli")


def test_help_and_the_comparison_import_no_heavy_stack() -> None:
    """``themis --help`` answers without Ray, torch or scipy; the comparison needs no Ray or torch."""
    code = (
        "import sys\n"
        "from themis import cli\n"
        "cli.build_parser().format_help()\n"
        "print([m for m in ('ray', 'torch', 'deepspeed', 'vllm', 'scipy') if m in sys.modules])\n"
        "import themis.evaluation.compare\n"
        "print([m for m in ('ray', 'torch', 'deepspeed', 'vllm') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["[]", "[]"], out.stdout
