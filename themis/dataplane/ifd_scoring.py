"""IFD scoring in a Ray Data actor pool: batched forward passes of the IFD model, no generation.

Each actor loads the model once and scores the records of a batch: every record is two sequences
(Q + A, and A alone, built by ``themis.curation.ifd``), sorted by length and cut into ``batch_size``
forward passes so short sequences are not padded to long ones. Sequences are padded on the left,
so A's tokens sit at the end of every row and only the last few positions' logits are computed
(``logits_to_keep``): a 49k-token vocabulary times a 1,000-token prompt would otherwise cost
gigabytes per batch for logits that are never used.

Finished scores go to ``<run>/cache/<stage>-ifd/``, one file per actor call, keyed by the model
and what it reads (``ifd.ifd_key``): a rerun of a killed stage re-scores at most the records that
were in flight, one batch per actor.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from themis.config import IFDScorerConfig
from themis.curation.ifd import IFDScore, build_ifd_examples, ifd_key, score_from_token_losses
from themis.curation.sft import IGNORE
from themis.dataplane.call_cache import CacheSpec, KeyedParts
from themis.dataplane.generation import PoolPlan, check_room_for_tasks
from themis.dataplane.tables import MESSAGES, to_table

log = logging.getLogger(__name__)

INPUT = pa.schema([("key", pa.string()), ("messages", MESSAGES)])
CACHED = pa.schema(
    [("key", pa.string()), ("s_a_given_q", pa.float64()), ("s_a", pa.float64()), ("answer_tokens", pa.int64())]
)
SCORED = pa.schema(
    [
        *CACHED,
        ("error", pa.string()),
        ("cached", pa.bool_()),
        ("node", pa.string()),
        ("actor", pa.string()),
        # When the actor began and ended the batch (seconds since the epoch): throughput without start-up.
        ("started_at", pa.float64()),
        ("finished_at", pa.float64()),
    ]
)


@dataclass(frozen=True)
class ScorerPass:
    """The IFD model as a stage uses it: its spec, settings, sequence limit and score cache."""

    model: str
    cfg: IFDScorerConfig
    max_seq_len: int
    cache: CacheSpec | None = None

    @property
    def fingerprint(self) -> str:
        """What decides a score (never the pool or batch size)."""
        return json.dumps({"model": self.model, "dtype": self.cfg.dtype}, sort_keys=True)

    def key(self, messages: list[dict[str, str]]) -> str:
        return ifd_key(self.fingerprint, messages, self.max_seq_len)


def scorer_plan(cfg: IFDScorerConfig, gpus_in_cluster: float | None = None) -> PoolPlan:
    """The scorer's actor pool: its ``pool`` settings with defaults like a local engine's (a device
    of 'auto' takes a GPU when the cluster has one: ``gpus_in_cluster``, else asked of Ray)."""
    from themis.dataplane.generation import local_model_gpus

    pool = cfg.pool
    gpus = local_model_gpus(cfg.device, pool.gpus_per_actor, gpus_in_cluster)
    cpus = pool.cpus_per_actor or cfg.num_threads or 1
    return PoolPlan(pool.min_actors, pool.max_actors, pool.batch_size or 4 * cfg.batch_size, cpus, gpus)


# --- the cache ------------------------------------------------------------------------------------


class ScoreCache:
    """One actor's view of a stage's finished scores: all there when it opened, plus its own."""

    def __init__(self, spec: CacheSpec):
        self.parts = KeyedParts(spec, CACHED)

    def get(self, key: str) -> IFDScore | None:
        hit = self.parts.get(key)
        if hit is None:
            return None
        aq, a, n = hit
        return IFDScore(aq, a, aq / a if a > 0 else None, n)

    def put(self, scored: list[tuple[str, IFDScore]]) -> None:
        """Keep one batch's scores, durably, in one file (atomic: readers see it whole or not)."""
        self.parts.add(
            [
                {"key": k, "s_a_given_q": s.s_a_given_q, "s_a": s.s_a, "answer_tokens": s.answer_tokens}
                for k, s in scored
            ]
        )


# --- the actor ------------------------------------------------------------------------------------


class IFDScorer:
    """A Ray Data actor: the IFD model, loaded once, scoring batches of (key, messages) rows."""

    def __init__(self, scorer: ScorerPass):
        import ray
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from themis.engines.hf import _pick_device, _pick_dtype
        from themis.models import resolve_model

        cfg = scorer.cfg
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        path = resolve_model(scorer.model)
        self.device = _pick_device(cfg.device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        dtype = _pick_dtype(cfg.dtype, self.device)
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)  # transformers types .to() oddly
        self.model = model.to(self.device).eval()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.scorer = scorer
        self.cache = ScoreCache(scorer.cache) if scorer.cache else None
        self.node, self.actor = "", ""
        if ray.is_initialized():  # a Ray Data actor; tests also build one in-process
            context = ray.get_runtime_context()
            self.node, self.actor = context.get_node_id(), context.get_actor_id() or ""

    def __call__(self, batch: pa.Table) -> pa.Table:
        started_at = time.time()
        keys = batch.column("key").to_pylist()
        messages = batch.column("messages").to_pylist()
        results: dict[str, IFDScore | str] = {}
        cached = set()
        for key in keys:
            hit = self.cache.get(key) if self.cache else None
            if hit is not None:
                results[key] = hit
                cached.add(key)
        todo = [(k, m) for k, m in zip(keys, messages) if k not in results]
        fresh = self.score(todo)
        results.update(fresh)
        if self.cache:
            self.cache.put([(k, s) for k, s in fresh.items() if isinstance(s, IFDScore)])
        clock = {"started_at": started_at, "finished_at": time.time()}
        out = to_table((self._row(k, results[k], k in cached) | clock for k in keys), SCORED)
        for name in batch.column_names:  # a caller's own columns (e.g. a record id) ride along
            if name not in INPUT.names:
                out = out.append_column(name, batch.column(name))
        return out

    def _row(self, key: str, result: IFDScore | str, cached: bool) -> dict[str, Any]:
        score = result if isinstance(result, IFDScore) else None
        return {
            "key": key,
            "s_a_given_q": score.s_a_given_q if score else None,
            "s_a": score.s_a if score else None,
            "answer_tokens": score.answer_tokens if score else None,
            "error": None if score else result,
            "cached": cached,
            "node": self.node,
            "actor": self.actor,
        }

    def score(self, records: list[tuple[str, list[dict[str, str]]]]) -> dict[str, IFDScore | str]:
        """Scores of the records by key; a record that cannot be scored maps to its error text."""
        out: dict[str, IFDScore | str] = {}
        sequences = []  # (record index, 0 = given Q / 1 = alone, example)
        for i, (key, chat) in enumerate(records):
            try:
                pair = build_ifd_examples(self.tokenizer, chat, self.scorer.max_seq_len)
            except ValueError as exc:  # e.g. a target longer than max_seq_len
                out[key] = f"{type(exc).__name__}: {exc}"
                continue
            sequences += [(i, 0, pair[0]), (i, 1, pair[1])]
        sequences.sort(key=lambda s: len(s[2]["input_ids"]))
        losses: dict[tuple[int, int], list[float]] = {}
        size = self.scorer.cfg.batch_size
        for start in range(0, len(sequences), size):
            chunk = sequences[start : start + size]
            for (i, which, _), values in zip(chunk, self.token_losses([s[2] for s in chunk])):
                losses[(i, which)] = values
        for i, (key, _) in enumerate(records):
            if key not in out:
                out[key] = score_from_token_losses(losses[(i, 0)], losses[(i, 1)])
        return out

    def token_losses(self, examples: list[dict[str, list[int]]]) -> list[list[float]]:
        """Per-token cross-entropy of each example's labelled tokens (one forward pass)."""
        import torch
        import torch.nn.functional as F

        width = max(len(e["input_ids"]) for e in examples)
        pads = [width - len(e["input_ids"]) for e in examples]
        ids = torch.tensor([[self.pad_id] * p + e["input_ids"] for p, e in zip(pads, examples)])
        labels = torch.tensor([[IGNORE] * p + e["labels"] for p, e in zip(pads, examples)])
        mask = torch.tensor([[0] * p + [1] * (width - p) for p in pads])
        # Labelled tokens are the last ones of every row: the logits of the positions before them suffice.
        keep = max(sum(t != IGNORE for t in e["labels"]) for e in examples) + 1
        keep = min(keep, width)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # left padding must not shift the positions
        with torch.inference_mode():
            out = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
                logits_to_keep=keep,
            )
        logits = out.logits[:, :-1].float()
        targets = labels[:, width - keep + 1 :].to(self.device)
        per_token = F.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none")
        scored = targets != IGNORE
        return [per_token[r][scored[r]].tolist() for r in range(len(examples))]


# --- the pass over a stream of records ------------------------------------------------------------


def score_dataset(ds: Any, scorer: ScorerPass) -> Any:
    """``ds`` of (key, messages) rows scored by an autoscaling pool of ``IFDScorer`` actors (lazy)."""
    plan = scorer_plan(scorer.cfg)
    check_room_for_tasks("ifd scorer", plan)
    if plan.max_actors > 1:
        # One block goes to one actor: cut the stream into batch-sized blocks so every actor gets work.
        ds = ds.repartition(target_num_rows_per_block=plan.batch_size)
    return ds.map_batches(
        IFDScorer, fn_constructor_kwargs={"scorer": scorer}, batch_format="pyarrow", **plan.map_batches_args()
    )


def score_records(records: list[tuple[str, list[dict[str, str]]]], scorer: ScorerPass) -> list[dict[str, Any]]:
    """Score (key, messages) records through the actor pool; one ``SCORED`` row per distinct key."""
    import ray

    unique = dict(records)
    if not unique:
        return []
    table = to_table(({"key": k, "messages": m} for k, m in unique.items()), INPUT)
    out = score_dataset(ray.data.from_arrow(table), scorer)
    rows = []
    for batch in out.iter_batches(batch_format="pyarrow", batch_size=4096):
        rows += batch.to_pylist()
    return rows
