"""Labelled sets a judge is measured on, as judge-prompt items. Pure: no Ray or torch.

An item is a judge prompt plus its reference label: ``kind`` (single, reference, pairwise),
``label`` ("1".."5", or "A"/"B"/"tie" for the order shown), ``pair_id`` and ``order`` so both
orders of a pair can be matched, and ``messages`` (the prompt, JSON).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from themis import prompts
from themis.scenarios import get_scenario

Item = dict[str, Any]
PANDALM_LABELS = {0: "tie", 1: "A", 2: "B"}
# PandaLM items carry no scenario; they are open-ended requests, judged with the Open QA criteria.
PANDALM_SCENARIO = "open_qa"


def from_validation(rows: list[dict[str, Any]]) -> list[Item]:
    """Items from this run's validation split: the SFT prompt without its target."""
    items = []
    for r in rows:
        messages = json.loads(r["messages"])[:-1]
        items.append({k: r[k] for k in ("kind", "scenario", "pair_id", "order", "label")} | {
            "item_id": r["example_id"], "messages": json.dumps(messages)})
    return items


def from_pandalm(shared_dir: str | Path) -> list[Item]:
    """The PandaLM human-labelled test set (majority of three annotators), in both orders."""
    path = Path(shared_dir) / "pandalm" / "testset-v1.json"
    if not path.is_file():
        raise FileNotFoundError(f"PandaLM test set not found: {path} (set evaluate.shared_data_dir)")
    items = []
    for row in json.loads(path.read_text()):
        votes = Counter(row[f"annotator{i}"] for i in (1, 2, 3))
        label = PANDALM_LABELS[votes.most_common(1)[0][0]]
        instruction = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        items += pair_items(f"pandalm-{row['idx']}", PANDALM_SCENARIO, instruction, row["response1"], row["response2"], None, label)
    return items


def pair_items(pair_id: str, scenario_id: str, instruction: str, a: str, b: str, reference: str | None, label: str) -> list[Item]:
    """The two orders of one labelled pair; the ``ba`` label is flipped to match what is shown."""
    scenario = get_scenario(scenario_id)
    flipped = {"A": "B", "B": "A"}.get(label, label)
    out = []
    for order, (x, y), gold in (("ab", (a, b), label), ("ba", (b, a), flipped)):
        prompt = prompts.render_pairwise_prompt(scenario, instruction, x, y, reference)
        out.append({"item_id": f"{pair_id}:{order}", "kind": "pairwise", "scenario": scenario_id, "pair_id": pair_id,
                    "order": order, "label": gold, "messages": json.dumps(prompt.messages)})
    return out


def from_file(path: str | Path) -> list[Item]:
    """A user's JSONL of labelled items: kind, scenario, instruction, response or response_a/_b,
    optional reference, and label. A bad line fails with the file and line number."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"labelled set not found: {file}")
    items = []
    for n, line in enumerate(file.read_text().splitlines(), 1):
        if line.strip():
            try:
                items += _file_item(json.loads(line), f"{file.name}-{n}")
            except (json.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
                raise ValueError(f"{file}: line {n}: {exc}") from None
    return items


def _file_item(obj: dict[str, Any], item_id: str) -> list[Item]:
    scenario, label, ref = obj["scenario"], str(obj["label"]), obj.get("reference") or None
    if "response_a" in obj:
        if label not in ("A", "B", "tie"):
            raise ValueError(f"pairwise label must be A, B or tie, got {label!r}")
        return pair_items(item_id, scenario, obj["instruction"], obj["response_a"], obj["response_b"], ref, label)
    if label not in ("1", "2", "3", "4", "5"):
        raise ValueError(f"score label must be 1-5, got {label!r}")
    prompt = prompts.render_single_prompt(get_scenario(scenario), obj["instruction"], obj["response"], ref)
    kind = "reference" if ref else "single"
    return [{"item_id": item_id, "kind": kind, "scenario": scenario, "pair_id": "", "order": "", "label": label,
             "messages": json.dumps(prompt.messages)}]
