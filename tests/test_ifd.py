"""IFD: the arithmetic (against a direct computation on a tiny model), the per-scenario outlier
rule, every selection strategy, the scenario mix, and the dataset stage scoring in an actor pool."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.test_filters import pair, single
from themis.config import IFDScorerConfig, ScenarioMix, SelectionConfig
from themis.curation.filters import to_sft_example
from themis.curation.ifd import build_ifd_examples, mean_loss, score_from_token_losses
from themis.curation.selection import (
    NOT_SELECTED,
    OUTLIER,
    OVER_MIX,
    Unit,
    apply_mix,
    drop_outliers,
    group_units,
    mix_quotas,
    select,
    select_highest_ifd,
    select_random,
    select_stratified,
    stratum_quotas,
    z_scores,
)


def scored(i: int, scenario: str, ifd: float, score: int = 4) -> dict:
    return single(i, score) | {"scenario": scenario, "ifd": ifd}


def ids(units: list[Unit]) -> list[str]:
    return [r["judgment_id"] for u in units for r in u.rows]


# --- arithmetic ----------------------------------------------------------------------------------


def test_ifd_arithmetic_from_token_losses() -> None:
    s = score_from_token_losses([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])
    assert (s.s_a_given_q, s.s_a, s.ifd, s.answer_tokens) == (2.0, 2.0, 1.0, 3)
    assert score_from_token_losses([0.5, 0.5], [1.0, 3.0]).ifd == pytest.approx(0.25)
    assert score_from_token_losses([0.5], [0.0]).ifd is None  # s(A) = 0: no ratio
    with pytest.raises(ValueError, match="same tokens"):
        score_from_token_losses([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="empty"):
        mean_loss([])


def test_ifd_examples_score_the_same_answer_tokens(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    chat = to_sft_example(single(1, 4))["messages"]
    given_q, alone = build_ifd_examples(tok, chat, max_seq_len=512)
    answer = [t for t in given_q["labels"] if t != -100]
    assert [t for t in alone["labels"] if t != -100] == answer and alone["input_ids"][1:] == answer
    assert alone["input_ids"][0] == tok.bos_token_id and answer[-1] == tok.eos_token_id
    assert given_q["input_ids"][-len(answer) :] == answer


def direct_ifd(model, ids: list[int], n_answer: int) -> float:
    """Mean cross-entropy of the last ``n_answer`` tokens of one unpadded sequence."""
    import torch

    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    positions = range(len(ids) - n_answer, len(ids))
    return -sum(logp[p - 1, ids[p]].item() for p in positions) / n_answer


def test_ifd_scorer_matches_a_direct_computation_on_a_tiny_model(tiny_model_dir: Path) -> None:
    from themis.dataplane.ifd_scoring import IFDScorer, ScorerPass

    scorer = IFDScorer(ScorerPass(str(tiny_model_dir), IFDScorerConfig(batch_size=3), max_seq_len=512))
    # Records of different lengths in one batch: left padding and kept logits must not change a score.
    rows = [single(1, 4), single(2, 2, "a much longer prompt " * 12), pair("p1", "A", "A")[0]]
    chats = [to_sft_example(r)["messages"] for r in rows]
    scores = scorer.score([(str(i), c) for i, c in enumerate(chats)])
    for i, chat in enumerate(chats):
        given_q, alone = build_ifd_examples(scorer.tokenizer, chat, 512)
        n = sum(t != -100 for t in alone["labels"])
        s_aq = direct_ifd(scorer.model, given_q["input_ids"], n)
        s_a = direct_ifd(scorer.model, alone["input_ids"], n)
        got = scores[str(i)]
        assert got.s_a_given_q == pytest.approx(s_aq, rel=1e-4) and got.s_a == pytest.approx(s_a, rel=1e-4)
        assert got.ifd == pytest.approx(s_aq / s_a, rel=1e-4) and got.answer_tokens == n


# --- outliers, strategies, mix -------------------------------------------------------------------


def test_ifd_z_scores_and_outliers_are_per_scenario() -> None:
    assert z_scores([1.0, 1.0]) == [0.0, 0.0]
    assert z_scores([1.0, 3.0]) == [-1.0, 1.0]
    # open_qa: ten ordinary IFDs and one far above; math_qa's values are high but ordinary for it.
    rows = [scored(i, "open_qa", 0.5 + 0.01 * i) for i in range(10)] + [scored(10, "open_qa", 3.0)]
    rows += [scored(20 + i, "math_qa", 3.0 + 0.01 * i) for i in range(5)]
    kept, dropped = drop_outliers(group_units(rows), threshold=3.0)
    assert [r["judgment_id"] for r in dropped] == ["s10"] and dropped[0]["reason"] == OUTLIER
    assert dropped[0]["ifd"] == 3.0 and len(kept) == 15
    assert drop_outliers(group_units(rows), threshold=100.0)[1] == []


def test_ifd_pair_orders_are_one_unit() -> None:
    ab, ba = pair("p1", "A", "B")
    units = group_units([ab | {"ifd": 0.4}, single(1, 3) | {"ifd": 0.9}, ba | {"ifd": 0.8}])
    assert [len(u) for u in units] == [2, 1] and units[0].ifd == pytest.approx(0.6)
    assert units[0].label == "pairwise:A" and units[1].label == "score:3"
    assert Unit((ab | {"ifd": None}, ba | {"ifd": 0.8})).ifd is None


def test_ifd_highest_selection_takes_the_top_records() -> None:
    units = group_units([scored(i, "open_qa", v) for i, v in enumerate([0.2, 0.9, 0.5, 0.7])])
    chosen, rest = select_highest_ifd(units, 2)
    assert ids(chosen) == ["s1", "s3"] and ids(rest) == ["s2", "s0"]
    # A pair that would overshoot the target is skipped; a later single still fits.
    ab, ba = pair("p1", "A", "A")
    units = group_units([ab | {"ifd": 0.95}, ba | {"ifd": 0.95}, scored(5, "open_qa", 0.1)])
    chosen, _ = select_highest_ifd(units, 1)
    assert ids(chosen) == ["s5"]


def test_ifd_stratified_selection_keeps_scenario_and_label_proportions() -> None:
    rows = [scored(i, "open_qa", i / 10, score=2 if i < 6 else 5) for i in range(8)]  # 6 x score 2, 2 x score 5
    rows += [scored(10 + i, "math_qa", i / 10) for i in range(4)]
    assert stratum_quotas({"a": 6, "b": 2, "c": 4}, 6) == {"a": 3, "b": 1, "c": 2}
    assert sum(stratum_quotas({"a": 1, "b": 1, "c": 1}, 2).values()) == 2
    chosen, rest = select_stratified(group_units(rows), 6)
    assert ids(chosen) == ["s13", "s12", "s5", "s4", "s3", "s7"]  # highest IFD within each stratum
    assert len(rest) == 6


def test_ifd_random_selection_is_seeded_and_ignores_ifd() -> None:
    units = group_units([single(i, 3) | {"ifd": None} for i in range(10)])
    a, _ = select_random(units, 4, seed=1)
    b, _ = select_random(list(reversed(units)), 4, seed=1)
    assert ids(a) == ids(b) and len(ids(a)) == 4
    assert ids(select_random(units, 4, seed=2)[0]) != ids(a)


def test_ifd_select_rejects_the_rest_with_the_strategy() -> None:
    units = group_units([scored(i, "open_qa", i / 10) for i in range(5)])
    kept, dropped = select(units, "highest_ifd", 3, seed=0)
    assert len(kept) == 3 and {r["reason"] for r in dropped} == {f"{NOT_SELECTED} (highest_ifd, target 3)"}
    assert select(units, "all", None, seed=0) == (units, [])


def test_scenario_mix_weights_and_quotas() -> None:
    assert mix_quotas({"open_qa": 10, "math_qa": 4}, ScenarioMix(weights={"open_qa": 1, "math_qa": 1})) == {
        "open_qa": 4,
        "math_qa": 4,
    }
    assert mix_quotas({"open_qa": 10, "math_qa": 4}, ScenarioMix(weights={"open_qa": 3})) == {
        "open_qa": 10,
        "math_qa": 0,
    }
    assert mix_quotas({"open_qa": 10, "math_qa": 4}, ScenarioMix(quotas={"open_qa": 2})) == {"open_qa": 2, "math_qa": 4}
    rows = [scored(i, "open_qa", i / 10) for i in range(6)] + [scored(10 + i, "math_qa", i / 10) for i in range(2)]
    kept, dropped = apply_mix(group_units(rows), ScenarioMix(weights={"open_qa": 1, "math_qa": 1}), seed=0)
    assert sorted(ids(kept)) == ["s10", "s11", "s4", "s5"] and {r["reason"] for r in dropped} == {OVER_MIX}
    with pytest.raises(ValueError, match="exactly one"):
        ScenarioMix(weights={"open_qa": 1}, quotas={"open_qa": 1})
    with pytest.raises(ValueError, match="unknown scenario"):
        ScenarioMix(quotas={"nope": 1})


def test_ifd_selection_config_is_checked() -> None:
    with pytest.raises(ValueError, match="needs selection.target"):
        SelectionConfig(strategy="highest_ifd")
    with pytest.raises(ValueError, match="not all"):
        SelectionConfig(strategy="all", target=3)
    assert not SelectionConfig().needs_ifd and SelectionConfig(strategy="all").needs_ifd
    assert not SelectionConfig(strategy="random", target=3, outlier_z=None).needs_ifd


def test_ifd_plot_is_a_png() -> None:
    from themis.curation.selection import render_ifd_plot

    png = render_ifd_plot({"open_qa": [0.5, 0.7, 0.9], "math_qa": [1.1]}, {"open_qa": [0.9]})
    assert png.startswith(b"\x89PNG") and math.isfinite(len(png))


# --- the dataset stage: IFD in an actor pool, rejects, report, resume ----------------------------


def ifd_stage_config(model: Path, **selection) -> object:
    from themis.config import PipelineConfig

    return PipelineConfig.model_validate(
        {
            "ray": {"num_cpus": 2, "object_store_memory_mb": 400, "profile": "small_machine"},
            "train": {"base_model": str(model), "max_seq_len": 256},
            "dataset": {
                "balance": False,
                "validation_fraction": 0.2,
                "selection": {"scorer": {"batch_size": 4, "pool": {"batch_size": 4}}} | selection,
                "mix": {"quotas": {"math_qa": 3}},
            },
        }
    )


def ifd_judgments() -> list[dict]:
    rows = [
        single(i, 2 + i % 3, f"judge this {'long ' * (i % 4)}prompt {i}")
        | {"scenario": "open_qa" if i % 2 else "math_qa", "instruction_id": f"i{i}", "rationale": "r" * (1 + i % 5)}
        for i in range(16)
    ]
    return rows + pair("p1", "A", "B") + pair("p2", "tie", "tie")


@pytest.mark.integration
def test_ifd_dataset_stage_scores_in_an_actor_pool_and_resumes(ray_local, tiny_model_dir: Path, tmp_path: Path) -> None:
    import pyarrow.fs as pafs

    from themis.config import StorageConfig
    from themis.dataplane.tables import to_table
    from themis.stages import dataset
    from themis.stages.judgments import SCHEMA as JUDGMENTS_SCHEMA
    from themis.storage import RunStore

    store = RunStore(StorageConfig(root=str(tmp_path)), "r")
    store.write_table("judgments/data.parquet", to_table(ifd_judgments(), JUDGMENTS_SCHEMA))
    cfg = ifd_stage_config(tiny_model_dir, strategy="highest_ifd", target=8, outlier_z=1.5)
    first = dataset.run(cfg, store)
    counts, report = first.counts, first.details
    assert counts["rows_in"] == 20 == counts["rows_out"] + counts["rows_rejected"]
    assert [s["step"] for s in report["steps"]] == [
        "filters",
        "ifd_scoring",
        "ifd_outliers",
        "selection",
        "scenario_mix",
    ]
    assert all(s["rows_in"] == s["rows_out"] + s["rows_rejected"] for s in report["steps"])
    chosen = report["selection"]
    assert chosen["scoring"]["records"] == report["steps"][1]["rows_in"] and chosen["scoring"]["reused"] == 0
    assert set(chosen["ifd_by_scenario"]) == {"open_qa", "math_qa"} and chosen["ifd_by_scenario"]["open_qa"]["n"] > 0
    assert sum(chosen["selected_by_scenario_label"]["math_qa"].values()) <= 3  # the quota, after selection
    assert sum(n for c in chosen["selected_by_scenario_label"].values() for n in c.values()) == counts["train"] <= 8
    rejects = store.read_table("rejects/dataset.parquet").to_pylist()
    by_selection = [r for r in rejects if r["reason"].startswith(("ifd", "selection", "scenario mix"))]
    assert by_selection and all(r["ifd"] is not None and r["ifd"] > 0 for r in by_selection)
    assert (tmp_path / "r/dataset/ifd_by_scenario.png").read_bytes().startswith(b"\x89PNG")
    table = store.read_table("dataset/ifd.parquet").to_pylist()
    assert sum(r["kept"] for r in table) == counts["train"] and all(r["ifd"] for r in table)

    # Resume: lose one batch's scores (as a kill would), run again: only that batch is scored again.
    cache = store.path("cache/dataset-ifd")
    files = [f for f in store.fs.get_file_info(pafs.FileSelector(cache)) if f.base_name.endswith(".parquet")]
    lost = store.count_rows(f"cache/dataset-ifd/{files[0].base_name}")
    store.fs.delete_file(files[0].path)
    again = dataset.run(cfg, store)
    assert again.details["selection"]["scoring"]["reused"] == chosen["scoring"]["records"] - lost
    assert store.read_table("dataset/ifd.parquet").to_pylist() == table  # the same scores, the same selection
