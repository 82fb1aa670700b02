"""The config documents itself: every field has a description, and docs/config-schema.json is the
schema the code generates now."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from themis.config import PipelineConfig, Strict
from themis.config.schema import SCHEMA_PATH, render_schema


def reachable_models(root: type[BaseModel]) -> list[type[BaseModel]]:
    """Every model a config can hold, from ``root`` down through fields, unions, lists and dicts."""
    seen: list[type[BaseModel]] = []
    todo: list[object] = [root]
    while todo:
        item = todo.pop()
        if isinstance(item, type) and issubclass(item, BaseModel):
            if item not in seen:
                seen.append(item)
                todo.extend(field.annotation for field in item.model_fields.values())
        else:  # Annotated, X | Y, list[...], dict[...]: look inside (Literal values are not types)
            todo.extend(typing.get_args(item))
    return seen


def missing_descriptions(root: type[BaseModel]) -> list[str]:
    """``Model.field`` for every reachable field without a description."""
    return [
        f"{model.__name__}.{name}"
        for model in reachable_models(root)
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]


def test_the_walk_reaches_nested_unions_lists_and_dicts() -> None:
    names = {m.__name__ for m in reachable_models(PipelineConfig)}
    # engines (dict of a union), judges (list of a union), optional sections, deep nesting
    assert {"VLLMEngineConfig", "OpenAIEngineConfig", "RecordedJudge", "AblationArm", "LoraSettings"} <= names
    assert {"ActorPool", "IFDScorerConfig", "ServeVLLMConfig", "ScenarioMix", "BootstrapConfig"} <= names
    assert len(names) >= 40


def test_every_config_field_has_a_description() -> None:
    missing = missing_descriptions(PipelineConfig)
    assert not missing, f"config fields without a description (add Field(description=...)): {missing}"


def test_the_check_finds_a_field_without_a_description() -> None:
    class Leaf(Strict):
        told: int = Field(1, description="Has one.")
        untold: int = 2

    class Root(Strict):
        leaves: dict[str, list[Leaf] | None] = Field(default_factory=dict, description="Nested.")

    assert missing_descriptions(Root) == ["Leaf.untold"]


def test_committed_schema_is_what_the_code_generates() -> None:
    committed = SCHEMA_PATH.read_text() if SCHEMA_PATH.exists() else ""
    assert committed == render_schema(), (
        f"{SCHEMA_PATH} is stale: the config models changed. Regenerate it with "
        "`.venv/bin/python -m themis.config.schema` and commit it."
    )


def test_schema_documents_every_section() -> None:
    schema = json.loads(render_schema())
    assert set(schema["properties"]) == set(PipelineConfig.model_fields)
    assert all(prop.get("description") for prop in schema["properties"].values())


@pytest.mark.parametrize("missing", [True, False])
def test_schema_cli_writes_and_checks(tmp_path: Path, missing: bool) -> None:
    from themis.config.schema import main

    out = tmp_path / "schema.json"
    if not missing:
        out.write_text("{}\n")
    assert main(["--check", "--out", str(out)]) == 1
    assert main(["--out", str(out)]) == 0
    assert out.read_text() == render_schema()
    assert main(["--check", "--out", str(out)]) == 0
