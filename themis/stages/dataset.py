"""Stage 4, dataset: filter and balance teacher judgments into a chat-format SFT set.

Reads the typed judgments table (the judge prompt as a list of messages, the responses as a list,
the verdict as ``score`` or ``winner``) and writes typed SFT splits. Order of filters: drop
duplicate prompts; keep pairs whose two orders agree (the ``ba`` judgment becomes the pair's
swapped-order copy); balance scores and winners; split by instruction into train and validation;
then, on the training split only, IFD selection and the scenario mix (``select_train``).

Why one module of over 400 lines: the key table the filters decide on, the streaming write-out that
routes each row by its decision, and the report that reconciles every judgment must agree row for
row; kept together, that agreement is read in one place.

Selection is part of this stage, after the split, rather than a stage of its own: it must see
only the training split (validation stays the same items whatever is selected, so two selections
are compared on the same items), the train stage keeps reading ``dataset/train.parquet``, and one
report reconciles every record of the run's judgments. It is the only part of the stage that
needs Ray, and it starts Ray only when it scores IFD.

Custom-prompt augmentation (``dataset.augment``, off by default; ``themis.curation.augment``) comes last,
on the selected training records only. Validation is never augmented: it stays the teacher's own
judgments on the 1-5 scale, the same items whether an arm augments or not (so an ablation with
and without augmentation compares on the same items), and an augmented record, which keeps its
source's instruction id, can never sit on the other side of the split. Augmenting after selection
keeps the selection's ``target`` a count of teacher judgments and spends no IFD scoring on
variants of one judgment. The subset regressions fit on the whole training side before selection
(more data, and never a validation label).

The judgments never sit whole in the driver. The filters, the split and the selection decide on a
slim key table (ids, kind, order, verdict, scenario and a hash of the prompt: about 200 bytes a
judgment, read column by column); IFD scoring streams the training records from the judgments
file through the scorer's Ray Data actor pool, and only their scores come back; the outputs are
written by a second streaming read, one record batch at a time, each row routed by its decision.
Augmentation, off by default, is the exception: it draws across the selected training records and
reads them whole (their text is what it rewrites).

The filter report counts rows per reason and per step, and they reconcile at every step:
rows in = rows kept + rows rejected; the augmentation step adds rows, so there
rows in + rows added = rows out + rows rejected (0), and for the stage
rows_in + rows_augmented = rows_out + rows_rejected. A record that could not be augmented one way
is counted in ``augmentation.skipped_by_reason``; it is not a reject (it is still trained on).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from themis.config import PipelineConfig
from themis.curation import augment, selection
from themis.curation.filters import (
    balance,
    balance_key,
    drop_duplicates,
    pair_consistency,
    prompt_key,
    split_by_instruction,
    to_sft_example,
)
from themis.dataplane.call_cache import CacheSpec
from themis.dataplane.ledger import StageTally
from themis.dataplane.tables import MESSAGES, STRINGS, to_table, with_columns
from themis.judge.parsing import ParseError
from themis.judge.scenarios import Criterion, get_scenario
from themis.stages import StageReport
from themis.stages.judgments import SCHEMA as JUDGMENTS_SCHEMA
from themis.storage import RunStore

# Every judgment this stage drops, as the judgments stage wrote it, with the reason and (for
# records dropped by selection) its IFD.
REJECT_SCHEMA = with_columns(JUDGMENTS_SCHEMA, ("reason", pa.string()), ("ifd", pa.float64()))
# One chat per row; ``score`` (single, reference) or ``winner`` (pairwise, for the order shown) is
# the teacher's verdict, and the prompt's parts let evaluation re-render it.
SFT_SCHEMA = pa.schema(
    [
        ("example_id", pa.string()),
        ("kind", pa.string()),
        ("order", pa.string()),
        ("pair_id", pa.string()),
        ("scenario", pa.string()),
        ("instruction_id", pa.string()),
        ("score", pa.int32()),
        ("winner", pa.string()),
        ("messages", MESSAGES),
        ("instruction", pa.string()),
        ("responses", STRINGS),
        ("reference", pa.string()),
        # The score's scale (null = 1-5), the augmentation kind ("" = a teacher judgment) and the
        # judgment an augmented record comes from (``themis.curation.augment``).
        ("scale", pa.string()),
        ("augmentation", pa.string()),
        ("source_example_id", pa.string()),
    ]
)
# Every scored training record: its losses, IFD, and whether selection kept it.
IFD_SCHEMA = pa.schema(
    [
        ("example_id", pa.string()),
        ("scenario", pa.string()),
        ("label", pa.string()),
        ("s_a_given_q", pa.float64()),
        ("s_a", pa.float64()),
        ("ifd", pa.float64()),
        ("answer_tokens", pa.int64()),
        ("kept", pa.bool_()),
        ("reason", pa.string()),
    ]
)
JUDGMENTS = "judgments/data.parquet"
# What the filters, the split and the selection decide on: everything but the judgment's text.
KEY_COLUMNS = ["judgment_id", "kind", "order", "pair_id", "scenario", "instruction_id", "score", "winner"]
BATCH_ROWS = 1024  # rows per record batch of the streaming reads (a few MB of judgments each)
IFD_CACHE = "dataset-ifd"  # <run>/cache/dataset-ifd/: finished scores, reused by a rerun
PARAPHRASE_CACHE = "dataset-paraphrase"  # <run>/cache/dataset-paraphrase/: the teacher's paraphrase calls


def check(cfg: PipelineConfig) -> None:
    """The IFD model exists (before any Ray or data work), when selection scores IFD; the teacher
    can start, when augmentation paraphrases criteria."""
    if cfg.dataset.selection.needs_ifd:
        from themis.models import resolve_model

        resolve_model(ifd_model(cfg))
    if cfg.dataset.augment.paraphrase.enabled:
        from themis.dataplane.generation import check_engine

        check_engine(paraphrase_engine(cfg, store=None))


def ifd_model(cfg: PipelineConfig) -> str:
    """The model IFD is scored under: the configured one, else the student's base model."""
    return cfg.dataset.selection.scorer.model or cfg.train.base_model


def run(cfg: PipelineConfig, store: RunStore) -> StageReport:
    """Build train/validation SFT sets from parsed judgments; write them, rejects and a filter report."""
    judgments = read_keys(store)
    if not judgments:
        raise ValueError(f"no parsed judgments in {store.uri(JUDGMENTS)}: nothing to train on")
    kept, rejected = filter_judgments(judgments, cfg)
    steps = [step("filters", len(judgments), kept, rejected)]
    pool, val = split_by_instruction(kept, cfg.dataset.validation_fraction, cfg.run.seed)
    train, dropped, selected = select_train(pool, cfg, store, steps)
    rejected += dropped
    kept = train + val
    if len(kept) + len(rejected) != len(judgments):  # the promise of this stage: nothing is lost
        raise AssertionError(
            f"filter counts do not reconcile: {len(judgments)} in, {len(kept)} kept, {len(rejected)} rejected"
        )
    usage = StageTally()  # the teacher's paraphrase calls, counted as the generation stages count theirs
    added, augmented, written = augment_train(train, pool, val, cfg, store, steps, usage)
    report = filter_report(judgments, kept, rejected, len(train) + len(added), len(val)) | {"steps": steps}
    if selected:
        report["selection"] = selected.pop("report")
    if augmented:
        report["augmentation"] = augmented
    if usage.calls:
        report["usage"] = usage.usage(cfg.engines)
    outputs = {
        **write_splits(store, decisions(train, val, rejected), added),
        **selected,
        **written,
        "report": store.write_json("dataset/filter_report.json", report),
    }
    counts = {
        "rows_in": len(judgments),
        "rows_augmented": len(added),
        "rows_out": len(train) + len(added) + len(val),
        "rows_rejected": len(rejected),
        "train": len(train) + len(added),
        "validation": len(val),
    }
    if counts["rows_in"] + counts["rows_augmented"] != counts["rows_out"] + counts["rows_rejected"]:
        raise AssertionError(f"dataset counts do not reconcile: {counts}")
    return StageReport(inputs={"judgments": store.uri(JUDGMENTS)}, outputs=outputs, counts=counts, details=report)


# --- the streaming reads and writes ----------------------------------------------------------------


def read_keys(store: RunStore) -> list[dict[str, Any]]:
    """Every judgment's key columns, with ``prompt_key`` (the prompt's hash) in place of its text."""
    rows = []
    for batch in store.scan(JUDGMENTS, [*KEY_COLUMNS, "messages"], batch_size=BATCH_ROWS):
        keys = batch.select(KEY_COLUMNS).to_pylist()
        for row, messages in zip(keys, batch.column("messages").to_pylist()):
            rows.append(row | {"prompt_key": prompt_key(messages)})
    return rows


def read_whole(store: RunStore, ids: set[str], columns: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The judgments with these ids, by id (only what augmentation rewrites is read whole)."""
    wanted = pa.array(sorted(ids), pa.string())
    found: dict[str, dict[str, Any]] = {}
    for batch in store.scan(JUDGMENTS, columns or JUDGMENTS_SCHEMA.names, batch_size=BATCH_ROWS):
        chosen = batch.filter(pc.is_in(batch.column("judgment_id"), value_set=wanted))
        found |= {row["judgment_id"]: row for row in chosen.to_pylist()}
    return found


def decisions(train: list[dict], val: list[dict], rejected: list[dict]) -> dict[str, tuple[str, str | None, Any]]:
    """Where each judgment goes, by id: (its split or "rejects", its reject reason, its IFD if scored);
    the streaming write routes the rows by it."""
    routes = {}
    for split, rows in (("train", train), ("validation", val), ("rejects", rejected)):
        for row in rows:
            routes[row["judgment_id"]] = (split, row.get("reason"), row.get("ifd"))
    return routes


def write_splits(store: RunStore, routes: dict[str, tuple], added: list[dict]) -> dict[str, str]:
    """Stream the judgments once, writing each row to its split as an SFT record or to the rejects
    with its reason; the augmented records follow the training split's own."""
    import pyarrow.parquet as pq

    files = {
        "train": ("dataset/train.parquet", SFT_SCHEMA),
        "validation": ("dataset/validation.parquet", SFT_SCHEMA),
        "rejects": ("rejects/dataset.parquet", REJECT_SCHEMA),
    }
    writers = {
        split: pq.ParquetWriter(store.write_path(rel), schema, filesystem=store.fs)
        for split, (rel, schema) in files.items()
    }
    try:
        for split, rows in routed_batches(store, routes):
            writers[split].write_table(to_table(rows, files[split][1]))
        if added:
            writers["train"].write_table(to_table(map(to_sft_example, added), SFT_SCHEMA))
    finally:
        for writer in writers.values():
            writer.close()
    return {split: store.uri(rel) for split, (rel, _) in files.items()}


def routed_batches(store: RunStore, routes: dict[str, tuple]) -> Iterator[tuple[str, list[dict]]]:
    """(split, rows as that split's file holds them), one record batch of judgments at a time."""
    for batch in store.scan(JUDGMENTS, JUDGMENTS_SCHEMA.names, batch_size=BATCH_ROWS):
        by_split: dict[str, list[dict]] = defaultdict(list)
        for row in batch.to_pylist():
            split, reason, ifd = routes[row["judgment_id"]]
            if split == "rejects":
                by_split[split].append(as_reject(row | {"reason": reason, "ifd": ifd}))
            else:
                by_split[split].append(to_sft_example(row))
        yield from by_split.items()


def filter_judgments(judgments: list[dict], cfg: PipelineConfig) -> tuple[list[dict], list[dict]]:
    """Duplicates out, pairs whose orders agree (with their swapped copies), balanced classes."""
    section = cfg.dataset
    unique, dupes = drop_duplicates(judgments)
    singles = [r for r in unique if r["kind"] != "pairwise"]
    records, copies, inconsistent = pair_consistency([r for r in unique if r["kind"] == "pairwise"], section.swap_pairs)
    records = singles + records
    unbalanced: list[dict[str, Any]] = []
    if section.balance:
        records, unbalanced = balance(records, section.balance_floor, cfg.run.seed)
    kept_pairs = {r["pair_id"] for r in records if r["kind"] == "pairwise"}
    unbalanced += [c | {"reason": "balancing: its pair was dropped"} for c in copies if c["pair_id"] not in kept_pairs]
    copies = [c for c in copies if c["pair_id"] in kept_pairs]
    return records + copies, dupes + inconsistent + unbalanced


def step(name: str, rows_in: int, kept: list, rejected: list) -> dict[str, Any]:
    """One step's counts; raises when they do not add up (a row lost or made up on the way)."""
    if rows_in != len(kept) + len(rejected):
        raise AssertionError(f"step {name}: {rows_in} in, {len(kept)} kept, {len(rejected)} rejected")
    return {"step": name, "rows_in": rows_in, "rows_out": len(kept), "rows_rejected": len(rejected)}


def as_reject(row: dict[str, Any]) -> dict[str, Any]:
    """A dropped judgment as a rejects row: its judgment columns, the reason, its IFD if scored."""
    return {c: row.get(c) for c in REJECT_SCHEMA.names}


def filter_report(judgments: list, kept: list, rejected: list, train: int, val: int) -> dict:
    """Counts per reason, kind, verdict and scenario of the judgments kept (``kept``), reconciled against
    the rows that came in; ``train`` and ``val`` are the sizes of the splits as written (augmented
    records included). Pairs are counted by their winner in the ``ab`` order."""
    return {
        "rows_in": len(judgments),
        "rows_kept": len(kept),
        "rows_augmented": train + val - len(kept),
        "rows_rejected": len(rejected),
        "rejected_by_reason": dict(Counter(r["reason"] for r in rejected)),
        "kept_by_kind": dict(Counter(r["kind"] for r in kept)),
        "kept_by_verdict": {
            f"{kind}:{verdict}": n
            for (kind, verdict), n in sorted(Counter((r["kind"], balance_key(r)[1]) for r in kept).items())
        },
        "kept_by_scenario": dict(Counter(r["scenario"] for r in kept)),
        "train": train,
        "validation": val,
    }


# --- selection of the training split ---------------------------------------------------------------


def select_train(
    train: list[dict], cfg: PipelineConfig, store: RunStore, steps: list[dict]
) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """IFD scoring, outlier removal, the selection strategy, then the scenario mix, on the training
    split: (kept, dropped, outputs with the selection ``report``). Each step is added to ``steps``."""
    section, mix = cfg.dataset.selection, cfg.dataset.mix
    if section.strategy == "off" and mix is None:
        return train, [], {}
    report: dict[str, Any] = {"strategy": section.strategy, "target": section.target, "outlier_z": section.outlier_z}
    report["pool_by_scenario_label"] = selection.counts_by_scenario_label(train)
    units, dropped = selection.group_units(train), list[Any]()
    if section.needs_ifd:
        report["scoring"] = attach_ifd(train, cfg, store)
        units, dropped = run_step(steps, "ifd_scoring", units, unscored)
        if section.outlier_z is not None:
            units, out = run_step(
                steps, "ifd_outliers", units, lambda us: selection.drop_outliers(us, section.outlier_z)
            )
            dropped += out
    if section.strategy != "off":
        units, out = run_step(
            steps, "selection", units, lambda us: selection.select(us, section.strategy, section.target, cfg.run.seed)
        )
        dropped += out
    if mix is not None:
        units, out = run_step(steps, "scenario_mix", units, lambda us: selection.apply_mix(us, mix, cfg.run.seed))
        dropped += out
        report["mix"] = mix.model_dump(exclude_none=True)
    kept = selection.flatten(units)
    report["selected_by_scenario_label"] = selection.counts_by_scenario_label(kept)
    outputs = {"report": report}
    if section.needs_ifd:
        outputs |= write_ifd(store, train, kept, dropped, report)
    return kept, dropped, outputs


def run_step(steps: list[dict], name: str, units: list, fn) -> tuple[list, list[dict]]:
    """Apply one selection step to units, record its counts (which must reconcile)."""
    rows_in = sum(map(len, units))
    kept, dropped = fn(units)
    steps.append(step(name, rows_in, selection.flatten(kept), dropped))
    return kept, dropped


def unscored(units: list) -> tuple[list, list[dict]]:
    """Units whose records could not be scored (e.g. a target longer than max_seq_len), or whose
    IFD is undefined, cannot be ranked: dropped with the reason."""
    failed = {u.key for u in units if any(r["ifd_error"] for r in u.rows)}
    rows = [
        r | {"reason": f"ifd: not scored ({r['ifd_error'] or 'its pair was not'})"}
        for u in units
        if u.key in failed
        for r in u.rows
    ]
    kept, undefined = selection.drop_undefined([u for u in units if u.key not in failed])
    return kept, rows + undefined


def attach_ifd(train: list[dict], cfg: PipelineConfig, store: RunStore) -> dict[str, Any]:
    """Score every training record's IFD in the scorer's actor pool and add ``ifd``, its losses
    and ``ifd_error`` to the rows (in place); returns what the scoring cost. The records stream from
    the judgments file to the actors; only their scores come back to the driver."""
    from themis.dataplane.ifd_scoring import ScorerPass, score_dataset
    from themis.dataplane.ledger import LIGHT, read_rows
    from themis.runtime import init_ray

    scorer_cfg = cfg.dataset.selection.scorer
    scorer = ScorerPass(
        model=ifd_model(cfg),
        cfg=scorer_cfg,
        max_seq_len=scorer_cfg.max_seq_len or cfg.train.max_seq_len,
        cache=CacheSpec(store.storage, store.run_name, IFD_CACHE),
    )
    init_ray(cfg.ray)  # only this part of the stage needs Ray
    wanted = frozenset(r["judgment_id"] for r in train)
    records = read_rows(store, JUDGMENTS).map_batches(
        scoring_inputs, fn_kwargs={"wanted": wanted, "scorer": scorer}, batch_format="pyarrow", **LIGHT
    )
    scored: dict[str, dict[str, Any]] = {}
    columns = ["judgment_id", "s_a_given_q", "s_a", "answer_tokens", "error", "cached", "actor"]
    for batch in score_dataset(records, scorer).iter_batches(batch_format="pyarrow", batch_size=BATCH_ROWS):
        scored |= {s["judgment_id"]: s for s in batch.select(columns).to_pylist()}
    if len(scored) != len(wanted):  # a record lost on the way would be silently unselectable
        raise AssertionError(f"IFD scoring returned {len(scored)} scores for {len(wanted)} training records")
    for row in train:
        s = scored[row["judgment_id"]]
        ok = s["error"] is None
        ifd = s["s_a_given_q"] / s["s_a"] if ok and s["s_a"] > 0 else None
        row.update(ifd=ifd, s_a_given_q=s["s_a_given_q"], s_a=s["s_a"], answer_tokens=s["answer_tokens"])
        row["ifd_error"] = None if ok else s["error"].split(":", 1)[0]
    return {
        "model": scorer.model,
        "max_seq_len": scorer.max_seq_len,
        "records": len(scored),
        "reused": sum(bool(s["cached"]) for s in scored.values()),
        "failed": sum(s["error"] is not None for s in scored.values()),
        "rows_by_actor": dict(Counter(s["actor"] for s in scored.values())),
    }


def scoring_inputs(batch: pa.Table, wanted: frozenset[str], scorer: Any) -> pa.Table:
    """The training records of a batch of judgments as the scorer reads them: (judgment_id, key,
    the SFT chat). Runs in Ray Data tasks, next to the data."""
    from themis.dataplane.ifd_scoring import INPUT

    mine = batch.filter(pc.is_in(batch.column("judgment_id"), value_set=pa.array(sorted(wanted), pa.string())))
    chats = [to_sft_example(row)["messages"] for row in mine.to_pylist()]
    table = to_table(({"key": scorer.key(chat), "messages": chat} for chat in chats), INPUT)
    return table.append_column("judgment_id", mine.column("judgment_id"))


def write_ifd(store: RunStore, train: list[dict], kept: list[dict], dropped: list[dict], report: dict) -> dict:
    """The IFD table and plot, and the distributions per scenario in the report."""
    reasons = {r["judgment_id"]: r["reason"] for r in dropped}
    rows = [
        {
            "example_id": r["judgment_id"],
            "scenario": r["scenario"],
            "label": ":".join(balance_key(r)),
            "s_a_given_q": r["s_a_given_q"],
            "s_a": r["s_a"],
            "ifd": r["ifd"],
            "answer_tokens": r["answer_tokens"],
            "kept": r["judgment_id"] not in reasons,
            "reason": reasons.get(r["judgment_id"]),
        }
        for r in train
    ]
    every, chosen = selection.ifd_by_scenario(train), selection.ifd_by_scenario(kept)
    report["ifd_by_scenario"] = {s: selection.distribution(v) for s, v in every.items()}
    report["ifd_selected_by_scenario"] = {s: selection.distribution(v) for s, v in chosen.items()}
    outputs = {"ifd": store.write_table("dataset/ifd.parquet", to_table(rows, IFD_SCHEMA))}
    if every:
        outputs["ifd_plot"] = store.write_bytes("dataset/ifd_by_scenario.png", selection.render_ifd_plot(every, chosen))
    return outputs


# --- custom-prompt augmentation of the training split ---------------------------------------------


def augment_train(
    train: list[dict],
    pool: list[dict],
    val: list[dict],
    cfg: PipelineConfig,
    store: RunStore,
    steps: list[dict],
    usage: StageTally,
) -> tuple[list[dict], dict[str, Any], dict[str, str]]:
    """The augmented records of the selected training records (``themis.curation.augment``), the report's
    ``augmentation`` section and the files written; adds the ``augmentation`` step and counts the
    teacher's calls in ``usage``. Subset regressions fit on ``pool``, the training side before selection."""
    section = cfg.dataset.augment
    if not section.enabled:
        return [], {}, {}
    seed = cfg.run.seed if section.seed is None else section.seed
    report: dict[str, Any] = {"seed": seed}
    variants: dict[str, list[tuple[Criterion, ...]]] = {}
    written = {}
    if section.paraphrase.enabled:
        variants, report["paraphrase"], rows = teacher_paraphrases(
            sorted({r["scenario"] for r in train}), cfg, store, usage
        )
        written["paraphrases"] = store.write_json("dataset/paraphrases.json", rows)
    # Augmentation rewrites the records' text and draws across them: the one step that reads them whole.
    whole = read_whole(store, {r["judgment_id"] for r in pool})
    records, fit_rows = [whole[r["judgment_id"]] for r in train], [whole[r["judgment_id"]] for r in pool]
    result = augment.augment_records(records, section, seed, variants, fit_rows)
    augment.check_sides(result.rows, train, val)
    added = len(result.rows)
    steps.append(
        {"step": "augmentation", "rows_in": len(train), "rows_added": added, "rows_out": len(train) + added}
        | {"rows_rejected": 0}
    )
    report |= {
        "rows_added": added,
        "by_kind": result.by_kind(),
        "by_split": {"train": added, "validation": 0},  # validation is never augmented (module doc)
        "skipped_by_reason": dict(sorted(result.skipped.items())),
    }
    return result.rows, report, written


def paraphrase_engine(cfg: PipelineConfig, store: RunStore | None) -> Any:
    """The teacher as the judgments stage configures it, with this stage's paraphrase cache."""
    from themis.dataplane.generation import EnginePass

    name = cfg.judgments.engine
    if name not in cfg.engines:
        known = ", ".join(sorted(cfg.engines)) or "none"
        raise ValueError(
            f"dataset.augment.paraphrase asks the teacher (judgments.engine={name!r}), not in engines ({known})"
        )
    cache = CacheSpec(store.storage, store.run_name, PARAPHRASE_CACHE) if store else None
    return EnginePass(name, cfg.engines[name], cache=cache)


def teacher_paraphrases(
    scenarios: list[str], cfg: PipelineConfig, store: RunStore, usage: StageTally
) -> tuple[dict[str, list[tuple[Criterion, ...]]], dict[str, Any], list[dict[str, Any]]]:
    """``variants`` paraphrases of each scenario's criteria by the teacher (one small Ray Data pass,
    cached: a rerun re-pays nothing), every call counted in ``usage`` like a generation stage's.
    Returns the valid ones per scenario, their counts, and one row per call for
    ``dataset/paraphrases.json`` (the criteria, or why the reply was refused)."""
    section, augment_cfg = cfg.dataset.augment.paraphrase, cfg.dataset.augment
    seed = cfg.run.seed if augment_cfg.seed is None else augment_cfg.seed
    planned = [(s, v) for s in scenarios for v in range(section.variants)]
    requests = [augment.paraphrase_request(get_scenario(s), v, section.sampling, seed) for s, v in planned]
    results = ask_teacher(requests, paraphrase_engine(cfg, store), cfg, usage)
    variants: dict[str, list[tuple[Criterion, ...]]] = defaultdict(list)
    rows, reasons = [], Counter[str]()
    for (scenario, v), result in zip(planned, results):
        row: dict[str, Any] = {"scenario": scenario, "variant": v, "output": result.text, "criteria": None}
        try:
            if not result.ok:
                raise ParseError(f"engine error: {result.error}")
            criteria = augment.parse_paraphrase(result.text, get_scenario(scenario))
            if criteria in variants[scenario]:
                raise ParseError("paraphrase: the same as another variant")
        except ParseError as exc:
            reasons[str(exc)] += 1
            rows.append(row | {"reason": str(exc)})
            continue
        variants[scenario].append(criteria)
        rows.append(row | {"criteria": [vars(c) for c in criteria], "reason": None})
    report = {
        "requested": len(planned),
        "accepted": sum(map(len, variants.values())),
        "rejected_by_reason": dict(sorted(reasons.items())),
    }
    return dict(variants), report, rows


def ask_teacher(requests: list, engine: Any, cfg: PipelineConfig, usage: StageTally) -> list:
    """The teacher's results for a few requests, in order, through its actor pool; each call (made or
    reused from the cache) is counted in ``usage``. Raises when every call failed (the teacher is down)."""
    import ray

    from themis.dataplane.generation import check_engine, generate
    from themis.dataplane.tables import REQUEST
    from themis.engines import GenerationResult
    from themis.engines.base import request_to_row
    from themis.runtime import init_ray

    if not requests:
        return []
    check_engine(engine)
    init_ray(cfg.ray)  # this part of the stage needs Ray
    schema = pa.schema([("n", pa.int64()), ("engine", pa.string()), ("request", REQUEST)])
    rows = ({"n": n, "engine": engine.name, "request": request_to_row(r)} for n, r in enumerate(requests))
    results: list = [GenerationResult(error="no result")] * len(requests)
    for batch in generate(ray.data.from_arrow(to_table(rows, schema)), engine).iter_batches(batch_format="pyarrow"):
        usage.add_calls(batch, placed=False)  # calls, tokens and failures, per engine, as the manifest shows them
        for n, text, error, p, c in zip(
            *(batch.column(k).to_pylist() for k in ("n", "output", "error", "prompt_tokens", "completion_tokens"))
        ):
            results[n] = GenerationResult(text=text or "", error=error, prompt_tokens=p, completion_tokens=c)
    usage.check_engines()
    return results
