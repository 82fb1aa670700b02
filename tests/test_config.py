from pathlib import Path

import pytest
from pydantic import ValidationError

from themis.config import ConfigError, PipelineConfig, load_config

CONFIGS = sorted((Path(__file__).parents[1] / "jobs" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_opens_with_its_command(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, PipelineConfig)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# Run: themis ") and path.name in first


def test_there_are_shipped_configs() -> None:
    assert {p.name for p in CONFIGS} >= {"demo.yaml", "tiny.yaml"}


def test_overrides_are_typed_and_nested() -> None:
    cfg = load_config(CONFIGS[0], ["train.max_steps=3", "run.name=exp", "instructions.scenarios=[close_qa]"])
    assert cfg.train.max_steps == 3 and cfg.run.name == "exp"
    assert cfg.instructions.scenarios == ["close_qa"]


def test_unknown_key_is_rejected_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.learning_rate: unknown key"):
        load_config(CONFIGS[0], ["train.learning_rate=1"])


def test_unknown_engine_name_is_named() -> None:
    with pytest.raises(ConfigError, match="judgments.engine='gpt9'"):
        load_config(CONFIGS[0], ["judgments.engine=gpt9"])


def test_bad_value_and_bad_override_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.zero_stage"):
        load_config(CONFIGS[0], ["train.zero_stage=7"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(CONFIGS[0], ["train.max_steps"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_config_is_frozen() -> None:
    cfg = load_config(CONFIGS[0])
    with pytest.raises(ValidationError):
        cfg.train.lr = 1.0  # type: ignore[misc]
