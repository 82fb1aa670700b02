import json

from themis.filters import balance, drop_duplicates, pair_consistency, split_by_instruction, to_sft_example


def single(i: int, score: int, prompt: str | None = None) -> dict:
    return {
        "judgment_id": f"s{i}",
        "kind": "single",
        "order": "",
        "pair_id": "",
        "scenario": "open_qa",
        "instruction_id": f"i{i % 5}",
        "messages": json.dumps([{"role": "user", "content": prompt or f"p{i}"}]),
        "score": score,
        "winner": None,
        "rationale": "because",
        "instruction": f"q{i}",
        "responses": json.dumps([f"answer {i}"]),
        "reference": None,
    }


def pair(pid: str, ab: str, ba: str) -> list[dict]:
    base = {
        "kind": "pairwise",
        "pair_id": pid,
        "scenario": "open_qa",
        "instruction_id": pid,
        "score": None,
        "rationale": "r",
    }
    return [
        base | {"judgment_id": f"{pid}ab", "order": "ab", "winner": ab, "messages": f"{pid}ab"},
        base | {"judgment_id": f"{pid}ba", "order": "ba", "winner": ba, "messages": f"{pid}ba"},
    ]


def test_duplicates_keep_the_first_prompt() -> None:
    kept, dropped = drop_duplicates([single(1, 3, "same"), single(2, 4, "same"), single(3, 5)])
    assert [r["judgment_id"] for r in kept] == ["s1", "s3"]
    assert dropped[0]["reason"] == "duplicate prompt"


def test_pairs_kept_only_when_both_orders_agree() -> None:
    rows = pair("p1", "A", "B") + pair("p2", "A", "A") + pair("p3", "tie", "tie") + pair("p4", "B", "A")[:1]
    records, copies, rejected = pair_consistency(rows, keep_swapped=True)
    assert {r["pair_id"] for r in records} == {"p1", "p3"}
    assert {r["order"] for r in copies} == {"ba"}
    reasons = sorted(r["reason"] for r in rejected)
    assert len(records) + len(copies) + len(rejected) == len(rows)
    assert reasons[0].startswith("other order missing") and reasons[1].startswith("pair orders disagree")


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
    messages = json.loads(ex["messages"])
    assert messages[-1] == {"role": "assistant", "content": "Overall rating: [[4]]\nbecause"}
    assert ex["label"] == "4"
