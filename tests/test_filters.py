import pyarrow as pa

from themis.config import PipelineConfig, StorageConfig
from themis.curation.filters import (
    balance,
    balance_key,
    drop_duplicates,
    pair_consistency,
    prompt_key,
    split_by_instruction,
    to_sft_example,
)
from themis.dataplane.tables import to_table
from themis.stages import dataset
from themis.stages.dataset import REJECT_SCHEMA, SFT_SCHEMA
from themis.stages.judgments import SCHEMA as JUDGMENTS_SCHEMA
from themis.storage import RunStore


def judgment(**fields) -> dict:
    """A judgments-table row with every column, as the judgments stage writes it."""
    base = {
        "judgment_id": "j",
        "kind": "single",
        "order": "",
        "pair_id": "",
        "instruction_id": "i0",
        "scenario": "open_qa",
        "instruction": "q",
        "reference": None,
        "response_ids": ["r0"],
        "responses": ["answer"],
        "messages": [{"role": "user", "content": "p"}],
        "output": "",
        "rationale": "because",
        "score": None,
        "winner": None,
        "prompt_tokens": 10,
        "completion_tokens": 5,
    }
    return base | fields


def single(i: int, score: int, prompt: str | None = None) -> dict:
    return judgment(
        judgment_id=f"s{i}",
        instruction_id=f"i{i % 5}",
        instruction=f"q{i}",
        responses=[f"answer {i}"],
        messages=[{"role": "system", "content": "judge"}, {"role": "user", "content": prompt or f"p{i}"}],
        score=score,
    )


def pair(pid: str, ab: str, ba: str) -> list[dict]:
    base = {"kind": "pairwise", "pair_id": pid, "instruction_id": pid, "responses": ["x", "y"], "rationale": "r"}
    return [
        judgment(**base, judgment_id=f"{pid}ab", order="ab", winner=ab, messages=[{"role": "user", "content": pid}]),
        judgment(
            **base, judgment_id=f"{pid}ba", order="ba", winner=ba, messages=[{"role": "user", "content": pid + "'"}]
        ),
    ]


def test_duplicates_keep_the_first_prompt() -> None:
    kept, dropped = drop_duplicates([single(1, 3, "same"), single(2, 4, "same"), single(3, 5)])
    assert [r["judgment_id"] for r in kept] == ["s1", "s3"]
    assert dropped[0]["reason"] == "duplicate prompt"


def test_prompt_key_reads_messages_as_lists_of_structs() -> None:
    # Rows read back from Parquet carry messages as lists of dicts; equal chats share a key.
    table = to_table([single(1, 3, "same"), single(2, 4, "same"), single(3, 3)], JUDGMENTS_SCHEMA)
    keys = [prompt_key(r["messages"]) for r in table.to_pylist()]
    assert keys[0] == keys[1] != keys[2] and len(keys[0]) == 64


def test_pairs_kept_only_when_both_orders_agree() -> None:
    rows = pair("p1", "A", "B") + pair("p2", "A", "A") + pair("p3", "tie", "tie") + pair("p4", "B", "A")[:1]
    records, copies, rejected = pair_consistency(rows, keep_swapped=True)
    assert {r["pair_id"] for r in records} == {"p1", "p3"}
    assert {r["order"] for r in copies} == {"ba"}
    reasons = sorted(r["reason"] for r in rejected)
    assert len(records) + len(copies) + len(rejected) == len(rows)
    assert reasons[0].startswith("other order missing") and reasons[1].startswith("pair orders disagree")


def test_balance_keys_put_both_orders_of_a_pair_in_one_class() -> None:
    ab, ba = pair("p1", "A", "B")
    assert balance_key(ab) == balance_key(ba) == ("pairwise", "A")
    assert balance_key(single(1, 4)) == balance_key(single(2, 4) | {"kind": "reference"}) == ("score", "4")


def test_balance_caps_each_score_at_the_rarest_class() -> None:
    rows = [single(i, 5) for i in range(10)] + [single(10 + i, 2) for i in range(3)]
    kept, dropped = balance(rows, floor=1, seed=0)
    assert sorted(r["score"] for r in kept) == [2, 2, 2, 5, 5, 5]
    assert len(kept) + len(dropped) == len(rows) and all(r["reason"].startswith("balancing") for r in dropped)


def test_split_never_shares_an_instruction() -> None:
    rows = [single(i, 3) for i in range(20)]
    train, val = split_by_instruction(rows, 0.2, seed=1)
    assert val and train and not {r["instruction_id"] for r in train} & {r["instruction_id"] for r in val}


def test_sft_example_targets_the_canonical_verdict() -> None:
    ex = to_sft_example(single(1, 4))
    assert ex["messages"][-1] == {"role": "assistant", "content": "Overall rating: [[4]]\nbecause"}
    assert ex["messages"][:-1] == single(1, 4)["messages"]
    assert (ex["score"], ex["winner"], ex["responses"], ex["reference"]) == (4, None, ["answer 1"], None)
    ba = to_sft_example(pair("p1", "A", "B")[1])
    assert (ba["score"], ba["winner"], ba["order"]) == (None, "B", "ba")  # the winner for the order shown
    assert ba["messages"][-1]["content"].startswith("Verdict: [[B]]")


def test_sft_examples_fit_the_dataset_schema_exactly() -> None:
    examples = [to_sft_example(single(1, 4)), to_sft_example(pair("p1", "tie", "tie")[0])]
    assert set(examples[0]) == set(SFT_SCHEMA.names)
    table = to_table(examples, SFT_SCHEMA)
    assert table.schema.field("messages").type == pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    assert table.column("score").to_pylist() == [4, None] and table.column("winner").to_pylist() == [None, "tie"]


def test_rejects_are_judgment_rows_with_a_reason() -> None:
    kept, dropped = drop_duplicates([single(1, 3, "same"), single(2, 4, "same")])
    assert set(kept[0]) == set(JUDGMENTS_SCHEMA.names) and set(dropped[0]) | {"ifd"} == set(REJECT_SCHEMA.names)
    table = to_table(map(dataset.as_reject, dropped), REJECT_SCHEMA)  # filters' rejects have no IFD
    assert table.column("reason").to_pylist() == ["duplicate prompt"] and table.column("ifd").to_pylist() == [None]


def test_dataset_stage_reads_typed_judgments_and_writes_typed_splits(tmp_path) -> None:
    rows = [single(i, 5 if i % 2 else 2) for i in range(8)] + [single(8, 2, "p0")]  # s8 repeats s0's prompt
    rows += pair("p1", "A", "B") + pair("p2", "A", "A") + pair("p3", "tie", "tie")
    store = RunStore(StorageConfig(root=str(tmp_path)), "r")
    store.write_table("judgments/data.parquet/part-0.parquet", to_table(rows, JUDGMENTS_SCHEMA))  # a folder of parts
    cfg = PipelineConfig.model_validate(
        {
            "engines": {"teacher": {"kind": "openai", "base_url": "http://localhost:1/v1", "model": "m"}},
            "responses": {"pool": [{"name": "m", "engine": "teacher"}]},
            "dataset": {"balance_floor": 1, "validation_fraction": 0.25},
        }
    )
    report = dataset.run(cfg, store)
    train, val = store.read_table("dataset/train.parquet"), store.read_table("dataset/validation.parquet")
    rejects = store.read_table("rejects/dataset.parquet")
    assert train.schema == SFT_SCHEMA and val.schema == SFT_SCHEMA and rejects.schema == REJECT_SCHEMA
    assert train.num_rows + val.num_rows + rejects.num_rows == len(rows) == report.counts["rows_in"]
    reasons = report.details["rejected_by_reason"]
    assert reasons["duplicate prompt"] == 1 and reasons["pair orders disagree (position bias)"] == 2
    assert set(report.details["kept_by_verdict"]) <= {"single:2", "single:5", "pairwise:A", "pairwise:tie"}
    examples = train.to_pylist() + val.to_pylist()
    assert all(e["messages"][-1]["role"] == "assistant" for e in examples)
    assert {e["winner"] for e in examples if e["kind"] == "pairwise"} <= {"A", "B", "tie"}
