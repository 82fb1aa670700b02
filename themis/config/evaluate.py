"""The evaluate stage's section: benchmarks (one or a suite), the judges under test, the report's
statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from themis.config.base import Sampling, Strict, plain_name, plain_name_check
from themis.config.engines import TransformersEngineConfig

PAIRWISE_LABELS = ("A", "B", "tie")
SCORE_LABELS = ("1", "2", "3", "4", "5")

JudgeName = Annotated[str, plain_name_check("judge name")]
JUDGE_NAME_HELP = "Report folder name (a plain name)."


def _label_text(value: Any) -> Any:
    """A label as text, as the loaders compare them: YAML's 0 or 2.0 become "0" and "2"."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip() if isinstance(value, int | float | str) else value


def _label_map(values: Any) -> Any:
    """A label mapping with its keys and values as text, so `{0: A}` and `{"0": A}` are one mapping."""
    if not isinstance(values, dict):
        return values
    return {_label_text(k): _label_text(v) for k, v in values.items()}


def _check_labels(values: dict[str, str], allowed: tuple[str, ...], where: str) -> None:
    bad = sorted({v for v in values.values() if v not in allowed})
    if bad:
        raise ValueError(f"{where} must map to {', '.join(allowed)}; got {bad}")


class BenchmarkConfig(Strict):
    """A labelled set the judges are measured on: this run's validation split, a shipped human-labelled
    set, or the user's own file."""

    name: Literal["validation", "pandalm", "hhh", "file"] = Field(
        "validation",
        description="'validation' (this run's split, the teacher as annotator), 'pandalm' or 'hhh' "
        "(human-labelled pairs, downloaded once from their pinned public source: themis.evaluation.sources), "
        "or 'file' (a JSON array, JSONL or Parquet at `path`).",
    )
    id: str | None = Field(
        None,
        description="The benchmark's name in reports and suites (a plain name); default: `name`, or the "
        "file's stem for name=file.",
    )
    path: str | None = Field(None, description="For name=file: the JSON array, JSONL or Parquet of labelled items.")
    kind: Literal["pointwise", "pairwise"] = Field("pointwise", description="For name=file: what the rows hold.")
    columns: dict[str, str | list[str] | dict[Literal["const"], str]] = Field(
        default_factory=dict,
        description="For name=file: canonical field -> file column (instruction, response, response_a, "
        "response_b, reference, scenario, category, item_id; human -> one column or a list, one per annotator), "
        "or {const: VALUE} to set the field on every row (e.g. scenario: {const: close_qa}).",
    )
    values: dict[str, str] | None = Field(
        None,
        description="For name=file: raw human label -> A, B or tie (pairwise) or 1-5 (pointwise), compared as "
        "stripped text (so 0 in the file matches '0'); a label outside it is an error. Without it labels are "
        "read as A/B/tie (any case) and scores as integers 1-5; numeric pair labels need this mapping, since "
        "datasets number them differently (PandaLM: 0 = tie, 1 = A, 2 = B; Auto-J: 0 = A, 1 = B, 2 = tie).",
    )
    subsets: Literal["scenario", "category"] | None = Field(
        None, description="An item field that splits the benchmark into subsets; reports add the mean over them."
    )
    data_dir: str | None = Field(
        None,
        description="Offline folder holding the shipped sets as <dataset>/<file> (as downloaded); default: "
        "THEMIS_DATA_DIR, else download once into the cache (THEMIS_CACHE_DIR, else the OS cache).",
    )
    limit: int | None = Field(None, ge=1, description="Use only the first N items.")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "shared_data_dir" in data:
            raise ValueError("benchmark.shared_data_dir is now benchmark.data_dir (or THEMIS_DATA_DIR)")
        return data

    @field_validator("values", mode="before")
    @classmethod
    def _values_as_text(cls, v: Any) -> Any:
        return _label_map(v)

    @model_validator(mode="after")
    def _consistent(self) -> BenchmarkConfig:
        if self.name == "file" and not self.path:
            raise ValueError("benchmark.name=file needs benchmark.path")
        if self.name != "file" and (self.values is not None or self.columns):
            raise ValueError(f"benchmark.values and benchmark.columns apply to name=file, not {self.name}")
        if self.values is not None:
            allowed = PAIRWISE_LABELS if self.kind == "pairwise" else SCORE_LABELS
            _check_labels(self.values, allowed, "benchmark.values")
        if any(isinstance(v, dict) and not v for v in self.columns.values()):
            raise ValueError("benchmark.columns: a constant is written {const: VALUE}")
        if any(isinstance(v, list) for k, v in self.columns.items() if k != "human"):
            raise ValueError("benchmark.columns: only human may map to a list of columns (one per annotator)")
        if isinstance(self.columns.get("item_id"), dict):
            raise ValueError("benchmark.columns.item_id cannot be a constant: item ids must be unique")
        plain_name(self.report_id, "benchmark.id")
        return self

    @property
    def report_id(self) -> str:
        """The benchmark's name in reports and suites."""
        if self.id:
            return self.id
        return Path(self.path).stem if self.name == "file" and self.path else self.name


class TrainedJudge(Strict):
    """This run's trained judge (the train stage's export), run by a transformers engine."""

    kind: Literal["trained"] = Field("trained", description="Judge type: this run's trained model.")
    name: JudgeName = Field("trained", description=JUDGE_NAME_HELP)
    engine: TransformersEngineConfig | None = Field(
        None, description="Engine settings for the export (model is filled in); None = defaults."
    )


class EngineJudge(Strict):
    """A judge behind one of the run's engines."""

    kind: Literal["engine"] = Field("engine", description="Judge type: a named engine.")
    name: JudgeName = Field(description=JUDGE_NAME_HELP)
    engine: str = Field(description="An engine name in `engines`: an OpenAI-compatible endpoint or a local checkpoint.")


class RecordedJudge(Strict):
    """Someone else's verdicts, joined to the benchmark by item id.

    Pairs may be recorded in both presentation orders: a second column (``swapped_verdict_field``,
    the run that showed response B first) or one record per order (``order_field`` +
    ``order_values``). Either way a verdict names the winner in the order shown, as engine judges'
    do; the report turns it back and gives dual-order consistency and position bias.
    """

    kind: Literal["recorded"] = Field("recorded", description="Judge type: verdicts recorded in a file.")
    name: JudgeName = Field(description=JUDGE_NAME_HELP)
    path: str = Field(
        description="JSON array, JSONL or Parquet of someone's verdicts; shipped:<dataset>/<file> for a file "
        "that comes with a shipped benchmark (e.g. shipped:pandalm/gpt-3.5-turbo-testset-v1.json)."
    )
    id_field: str = Field("idx", description="Column holding the benchmark item id.")
    verdict_field: str = Field(description="Column holding the verdict (pairs: for the A-B order shown).")
    values: dict[str, str] = Field(
        description="Raw value -> A, B, tie (pairs) or 1-5 (scores), compared as stripped text; anything else "
        "is counted as unparsable."
    )
    swapped_verdict_field: str | None = Field(
        None,
        description="Column holding the verdict of the run that showed the pair swapped (B first), for the "
        "order shown, mapped through the same `values`.",
    )
    order_field: str | None = Field(
        None, description="For files with one record per order: the column saying which order was shown."
    )
    order_values: dict[str, Literal["ab", "ba"]] | None = Field(
        None, description="With order_field: raw value -> ab (as in the benchmark) or ba (swapped)."
    )
    min_match: float = Field(
        0.9, ge=0, le=1, description="Share of the expected verdicts the file must have; below it the run warns."
    )
    on_duplicate: Literal["error", "first", "last"] = Field(
        "error", description="An id recorded twice (per order): an error, or keep the first or the last."
    )

    @field_validator("values", "order_values", mode="before")
    @classmethod
    def _values_as_text(cls, v: Any) -> Any:
        return _label_map(v)

    @model_validator(mode="after")
    def _one_way_to_the_second_order(self) -> RecordedJudge:
        if self.swapped_verdict_field and self.order_field:
            raise ValueError("give swapped_verdict_field or order_field, not both")
        if bool(self.order_field) != bool(self.order_values):
            raise ValueError("order_field and order_values go together")
        _check_labels(self.values, PAIRWISE_LABELS + SCORE_LABELS, f"judge {self.name}: values")
        return self


JudgeConfig = Annotated[TrainedJudge | EngineJudge | RecordedJudge, Field(discriminator="kind")]


def _default_judges() -> list[JudgeConfig]:
    return [TrainedJudge()]


class BootstrapConfig(Strict):
    """Confidence intervals of the report's metrics, by bootstrap over items."""

    resamples: int = Field(1000, ge=0, description="Bootstrap resamples for confidence intervals; 0 = none.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of the intervals.")


class EvaluateConfig(Strict):
    """The evaluate stage: every judge measured on every benchmark, one report each."""

    benchmark: BenchmarkConfig = Field(BenchmarkConfig(), description="The one benchmark (without `benchmarks`).")
    benchmarks: list[BenchmarkConfig] | None = Field(
        None,
        min_length=1,
        description="A suite instead of `benchmark`: every judge is measured on each (reports under "
        "<judge>/<benchmark id>/), and a suite report per judge gives the paper's aggregate over all of them.",
    )
    judges: list[JudgeConfig] = Field(
        default_factory=_default_judges, min_length=1, description="Judges under test; one report each."
    )
    sampling: Sampling = Field(Sampling(max_tokens=64), description="Sampling of the engine judges' calls.")
    unparsable: Literal["tie", "wrong", "exclude"] = Field(
        "wrong", description="How an unparsable pairwise verdict counts; the report states it."
    )
    both_orders: bool = Field(True, description="Judge pairs in both orders (engine judges).")
    reference_effect: bool = Field(
        False, description="Judge items that have a reference with and without it, and report the difference."
    )
    agr_p: float = Field(2, gt=0, description="p of Agr(p, q): a score gap below p earns partial credit.")
    agr_q: float = Field(2, ge=0, description="q of Agr(p, q): a gap earns 1 / (gap + 1)^q.")
    bootstrap: BootstrapConfig = Field(BootstrapConfig(), description="Confidence intervals of the metrics.")
    breakdown: Literal["scenario", "category"] = Field("scenario", description="Group items by this in the report.")
    plots: bool = Field(True, description="Write PNG plots beside each report.")
    macro_classes: Literal["occurring", "all"] = Field(
        "occurring",
        description="Classes macro precision/recall/F1 average over: those in the gold labels or the verdicts, "
        "or all three (tie, A, B) even when unused; the report states which.",
    )
    decisive_only: bool = Field(
        False,
        description="Also report decisive_accuracy: agreement on the verdicts where both the humans and the "
        "judge pick a winner (no tie).",
    )

    @model_validator(mode="after")
    def _one_benchmark_list(self) -> EvaluateConfig:
        if self.benchmarks is not None and "benchmark" in self.model_fields_set:
            raise ValueError("give evaluate.benchmark (one) or evaluate.benchmarks (a suite), not both")
        ids = [b.report_id for b in self.suite]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"benchmark ids must be unique in a suite (they name report folders): {dupes}")
        return self

    @property
    def suite(self) -> list[BenchmarkConfig]:
        """Every benchmark to measure on: the suite's, or the one benchmark."""
        return list(self.benchmarks) if self.benchmarks is not None else [self.benchmark]

    @field_validator("judges")
    @classmethod
    def _unique_names(cls, judges: list[Any]) -> list[Any]:
        names = [j.name for j in judges]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"judge names must be unique (they name report folders): {dupes}")
        return judges
