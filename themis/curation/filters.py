"""Filtering, balancing and splitting teacher judgments into an SFT set. Pure: no Ray or torch.

Every function returns what it keeps and what it rejects, each reject carrying a ``reason``, so
the dataset stage can prove that rows in = rows kept + rows rejected.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from typing import Any

from themis.judge.call import winner_in_ab_order
from themis.judge.prompts import render_pair_verdict, render_score_verdict
from themis.judge.verdict import family_of

Row = dict[str, Any]
# The balancing classes' family labels in the dataset's outputs ("score:4", "pairwise:A"): data
# that runs already hold, so the pointwise family keeps its label "score" there.
CLASS_FAMILY_LABELS = {"pointwise": "score", "pairwise": "pairwise"}


def reject(rows: list[Row], reason: str) -> list[Row]:
    """The rows, each tagged with why it was dropped."""
    return [r | {"reason": reason} for r in rows]


def prompt_key(messages: list[dict[str, str]]) -> str:
    """A fingerprint of a judge prompt: the SHA-256 of its canonical JSON."""
    canonical = json.dumps([{"role": m["role"], "content": m["content"]} for m in messages], ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def drop_duplicates(rows: list[Row]) -> tuple[list[Row], list[Row]]:
    """Keep the first judgment of each distinct prompt (identical answers give identical prompts).
    A row may carry its ``prompt_key`` instead of its messages (the dataset stage's key table)."""
    seen: set[str] = set()
    kept, dropped = [], []
    for row in rows:
        key = row["prompt_key"] if "prompt_key" in row else prompt_key(row["messages"])
        if key in seen:
            dropped.append(row)
        else:
            kept.append(row)
            seen.add(key)
    return kept, reject(dropped, "duplicate prompt")


def balance_key(row: Row) -> tuple[str, str]:
    """The class balancing evens out: the judgment family's label ("score" for pointwise kinds, or
    "pairwise") and its score, or its winner in the pair's ``ab`` order (so a pair's two orders fall
    in one class)."""
    family = family_of(row["kind"])
    label = CLASS_FAMILY_LABELS[family]
    if family == "pointwise":
        return label, str(row["score"])
    return label, winner_in_ab_order(row["winner"], row["order"])


def pair_consistency(rows: list[Row], keep_swapped: bool) -> tuple[list[Row], list[Row], list[Row]]:
    """Keep pairs whose two orders agree: returns (ab records, their ba copies, rejects).

    The ``ba`` judgment is the swapped-order copy of its pair, with the teacher's own rationale for
    that order, which beats a mechanically swapped text that would name the wrong response.
    """
    by_pair: dict[str, dict[str, Row]] = defaultdict(dict)
    for row in rows:
        by_pair[row["pair_id"]][row["order"]] = row
    records, copies, rejected = [], [], []
    for orders in by_pair.values():
        ab, ba = orders.get("ab"), orders.get("ba")
        if ab is None or ba is None:
            rejected += reject(list(orders.values()), "other order missing (not parsed or duplicate)")
        elif ab["winner"] != winner_in_ab_order(ba["winner"], "ba"):
            rejected += reject([ab, ba], "pair orders disagree (position bias)")
        elif keep_swapped:
            records.append(ab)
            copies.append(ba)
        else:
            records.append(ab)
            rejected += reject([ba], "swapped copy not wanted (dataset.swap_pairs=false)")
    return records, copies, rejected


def balance(rows: list[Row], floor: int, seed: int) -> tuple[list[Row], list[Row]]:
    """Sub-sample every class of each judgment kind down to the rarest class's size (at least ``floor``)."""
    rng = random.Random(seed)
    groups: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for row in rows:
        groups[balance_key(row)].append(row)
    quota: defaultdict[str, int] = defaultdict(lambda: 10**9)
    for (family, _), members in groups.items():
        quota[family] = min(quota[family], len(members))
    kept, dropped = [], []
    for (family, _), members in sorted(groups.items()):
        rng.shuffle(members)
        n = max(quota[family], floor)
        kept += members[:n]
        dropped += members[n:]
    return kept, reject(dropped, "balancing: over the class quota")


# --- self-consistency of the teacher's k samples of one item -------------------------------------

DISAGREE = "self-consistency: samples disagree"


def verdict_of(row: Row) -> str | None:
    """A judgment row's verdict as text, as a sample's ``verdicts`` entry holds it (its score or its
    winner); None when the row has none (its ``reason`` says why)."""
    if row["reason"] is not None:
        return None
    return row["winner"] if family_of(row["kind"]) == "pairwise" else str(row["score"])


def samples_agree(kind: str, verdicts: list[str], tolerance: int) -> bool:
    """The rule: the same pairwise winner in every sample, or scores within ``tolerance`` of each other."""
    if family_of(kind) == "pairwise":
        return len(set(verdicts)) == 1
    scores = [int(v) for v in verdicts]
    return max(scores) - min(scores) <= tolerance


def self_consistent(samples: list[Row], tolerance: int) -> Row:
    """One item from its k samples, each with its ``verdicts``: the first sample with the most
    common verdict when they agree; else the first sample, rejected (``DISAGREE``). An item with a
    sample that failed or did not parse cannot be checked: it is rejected with that reason."""
    samples = sorted(samples, key=lambda r: r["sample"])
    verdicts = [verdict_of(s) for s in samples]
    failed = next((s for s in samples if s["reason"] is not None), None)
    if failed is not None:
        return failed | {"verdicts": verdicts}
    if not samples_agree(samples[0]["kind"], [v for v in verdicts if v is not None], tolerance):  # all parsed
        return samples[0] | {"verdicts": verdicts, "reason": DISAGREE}
    common = max(verdicts, key=lambda v: (verdicts.count(v), -verdicts.index(v)))
    return samples[verdicts.index(common)] | {"verdicts": verdicts}


def split_by_instruction(rows: list[Row], fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """Train/validation split by instruction, so no instruction (or pair copy) leaks across."""
    ids = sorted({r["instruction_id"] for r in rows})
    random.Random(seed).shuffle(ids)
    n_val = round(len(ids) * fraction)
    if fraction > 0 and n_val == 0 and len(ids) > 1:
        n_val = 1
    val_ids = set(ids[:n_val])
    return [r for r in rows if r["instruction_id"] not in val_ids], [r for r in rows if r["instruction_id"] in val_ids]


def render_target(row: Row) -> str:
    """The judgment text the student learns: the canonical verdict sentence, then the rationale."""
    pairwise = family_of(row["kind"]) == "pairwise"
    head = render_pair_verdict(row["winner"]) if pairwise else render_score_verdict(row["score"])
    return f"{head}\n{row['rationale']}".strip()


def to_sft_example(row: Row) -> Row:
    """A chat-format SFT record: the judge prompt plus the target as the assistant's reply.

    ``score`` / ``winner`` are the teacher's verdict (the winner for the order shown; a score on
    ``scale``, 1-5 when null); the prompt's parts (instruction, responses, reference) let evaluation
    re-render it with or without the reference. ``augmentation`` is "" for a teacher judgment and the
    kind for an augmented record (``themis.curation.augment``); ``source_example_id`` is the judgment a record
    comes from (its own id for a teacher judgment).
    """
    messages = [*row["messages"], {"role": "assistant", "content": render_target(row)}]
    return {
        "example_id": row["judgment_id"],
        "kind": row["kind"],
        "order": row["order"],
        "pair_id": row["pair_id"],
        "scenario": row["scenario"],
        "instruction_id": row["instruction_id"],
        "score": row["score"],
        "winner": row["winner"],
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        "instruction": row["instruction"],
        "responses": list(row["responses"]),
        "reference": row["reference"] or None,
        "scale": row.get("scale"),
        "augmentation": row.get("augmentation", ""),
        "source_example_id": row.get("source_example_id") or row["judgment_id"],
    }
