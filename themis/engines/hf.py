"""A local engine on Hugging Face transformers: batched generation on CPU or GPU.

It can force a reply's opening and constrain what comes right after it to a few choices (the
score, the verdict letter), token by token, so a choice may span tokens ("10" after "1"). A 135M
model follows formats poorly; forcing the verdict sentence this way makes every output parseable
without changing what the model would rate.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from itertools import groupby
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from themis.config import TransformersEngineConfig
from themis.engines.base import GenerationRequest, GenerationResult, render_chat_prompt
from themis.models import resolve_model


class TransformersEngine:
    """Batched chat generation with a local causal LM."""

    def __init__(self, cfg: TransformersEngineConfig, model_path: str | Path | None = None):
        self.cfg = cfg
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        path = Path(model_path) if model_path else resolve_model(cfg.model)
        self.device = _pick_device(cfg.device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        # Left padding keeps every prompt's last token at the end, where generation continues.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = _pick_dtype(cfg.dtype, self.device)
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)  # transformers types .to() oddly
        self.model = model.to(self.device).eval()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """One result per request; a batch that fails marks its rows with the error."""
        results: list[GenerationResult | None] = [None] * len(requests)
        # Rows of similar length share a batch, so short prompts are not padded to long ones (on a
        # CPU the prompt is most of a judge call's cost).
        order = sorted(range(len(requests)), key=lambda i: (_sampling_key(requests[i]), requests[i].text_chars))
        for _, group in groupby(order, key=lambda i: _sampling_key(requests[i])):
            idx = list(group)
            for start in range(0, len(idx), self.cfg.batch_size):
                chunk = idx[start : start + self.cfg.batch_size]
                for i, res in zip(chunk, self._generate_safely([requests[i] for i in chunk])):
                    results[i] = res
        return [r if r is not None else GenerationResult(error="not generated") for r in results]

    def _generate_safely(self, batch: list[GenerationRequest]) -> list[GenerationResult]:
        try:
            return self._generate_batch(batch)
        except (RuntimeError, ValueError) as exc:  # e.g. out of memory, a prompt over the context
            return [GenerationResult(error=f"{type(exc).__name__}: {exc}") for _ in batch]

    @torch.inference_mode()
    def _generate_batch(self, batch: list[GenerationRequest]) -> list[GenerationResult]:
        first = batch[0]
        if first.seed is not None:
            torch.manual_seed(first.seed)
        texts = [self.render_prompt(r.messages) + r.prefix for r in batch]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        prompt_tokens = mask.sum(dim=1).tolist()
        chosen, forced, cache = [""] * len(batch), [0] * len(batch), None
        if first.choices:
            ids, mask, chosen, forced, cache = self._force_verdict(ids, mask, first)
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            cache=cache,
            max_new_tokens=first.max_tokens,
            do_sample=first.temperature > 0,
            temperature=first.temperature if first.temperature > 0 else None,
            top_p=first.top_p if first.temperature > 0 else None,
            top_k=None,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        generated = out[:, ids.shape[1] :]
        new = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        free = (generated != self.tokenizer.pad_token_id).sum(dim=1).tolist()
        completion_tokens = [n + f for n, f in zip(free, forced)]
        closing = first.closing if first.choices else ""
        return [
            GenerationResult(text=r.prefix + c + closing + t, prompt_tokens=p, completion_tokens=n)
            for r, c, t, p, n in zip(batch, chosen, new, prompt_tokens, completion_tokens)
        ]

    def _force_verdict(self, ids: torch.Tensor, mask: torch.Tensor, req: GenerationRequest):
        """Append one of the choices (greedy or sampled, token by token) and the closing to every row.

        A choice may take several tokens, and one may be a prefix of another ("1" and "10" where
        digits are single tokens). Each step allows only the tokens that continue some choice from
        what the row has so far; where a choice is already complete, the closing's first token
        stands for "stop here" (the model's own odds of closing the verdict now; the end of text
        when there is no closing). Returns left-padded ids and mask, the chosen strings and the
        number of forced tokens per row, and the prompt's key-value cache when ``generate`` can go on
        from it (every row forced the same number of tokens, so the padding did not move): the
        prompt of a judge call is most of its cost on CPU, and is then encoded once, not twice.
        """
        closing = self.tokenizer.encode(req.closing, add_special_tokens=False) if req.closing else []
        stop = closing[0] if closing else self.tokenizer.eos_token_id
        seqs = _choice_tokens(self.tokenizer, req.choices, stop)
        rows = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
        picked: list[tuple[int, ...]] = [() for _ in rows]
        active, cache = list(range(len(rows))), None
        while active:
            options = [_next_tokens(seqs, picked[r]) for r in active]
            batch = self._pad([rows[r] + list(picked[r]) for r in active], ids.device)
            first_step = cache is None and len(active) == len(rows)
            ks, step_cache = self._pick(*batch, [[stop if t is None else t for t in o] for o in options], req)
            cache = step_cache if first_step else cache
            ended = set()
            for r, o, k in zip(active, options, ks):
                if o[k] is None:
                    ended.add(r)
                else:
                    picked[r] += (o[k],)
            active = [r for r in active if r not in ended and _next_tokens(seqs, picked[r]) != [None]]
        ids, mask = self._pad([rows[r] + list(picked[r]) + closing for r in range(len(rows))], ids.device)
        forced = [len(p) + len(closing) for p in picked]
        aligned = len(set(forced)) == 1  # the first pass's padding still lines up with these rows
        return ids, mask, [seqs[p] for p in picked], forced, cache if aligned else None

    def _pick(self, ids: torch.Tensor, mask: torch.Tensor, options: list[list[int]], req: GenerationRequest):
        """For each row, the index of the option token it takes next (greedy, or sampled at the
        request's temperature among the options only), and the pass's key-value cache."""
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # as generate() numbers left-padded rows
        # Only the last position's logits: a 49k vocabulary over every prompt token costs gigabytes.
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1, :]
        width = max(len(o) for o in options)
        scores = torch.full((len(options), width), float("-inf"), device=ids.device)
        for i, o in enumerate(options):
            scores[i, : len(o)] = logits[i, o].float()
        if req.temperature > 0:
            picks = torch.multinomial(torch.softmax(scores / req.temperature, dim=-1), 1).squeeze(1).tolist()
        else:
            picks = scores.argmax(dim=-1).tolist()
        return picks, out.cache

    def _pad(self, rows: list[list[int]], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """Token rows of different lengths as a left-padded batch and its attention mask."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
                mask[i, width - len(r) :] = 1
        return ids.to(device), mask.to(device)

    def set_deadline(self, seconds: float) -> None:
        """Stop generating after ``seconds`` (the generation config's ``max_time``)."""
        self.model.generation_config.max_time = seconds

    def render_prompt(self, messages: list[dict[str, str]]) -> str:
        """The chat template applied, ready for the assistant's reply."""
        return render_chat_prompt(self.tokenizer, messages)


def _choice_tokens(tokenizer, choices: Sequence[str], stop: int) -> dict[tuple[int, ...], str]:
    """Each choice's token sequence (as encoded on its own), checked to tell the choices apart."""
    seqs = {tuple(tokenizer.encode(c, add_special_tokens=False)): c for c in choices}
    if len(seqs) != len(choices) or () in seqs:
        raise ValueError(f"choices {tuple(choices)} do not encode to distinct, non-empty token sequences")
    for seq in seqs:
        if any(seq[:i] in seqs and seq[i] == stop for i in range(1, len(seq))):
            raise ValueError(f"choice {seqs[seq]!r} continues another choice with the closing's first token")
    return seqs


def _next_tokens(seqs: dict[tuple[int, ...], str], picked: tuple[int, ...]) -> list[int | None]:
    """The tokens that continue some choice after ``picked``, and None when ``picked`` is a whole
    choice (stopping is allowed); ``[None]`` means nothing is left to choose."""
    n = len(picked)
    nxt = sorted({s[n] for s in seqs if len(s) > n and s[:n] == picked})
    return [*nxt, None] if picked in seqs else list(nxt)


def _sampling_key(r: GenerationRequest) -> tuple:
    # Requests in one batch must share sampling settings and constraints; a seed matters only
    # when sampling, so greedy rows with different seeds still share a batch.
    seed = (r.seed or 0) if r.temperature > 0 else 0
    return (r.max_tokens, r.temperature, r.top_p, seed, r.choices, r.closing)


def _pick_device(device: str) -> str:
    """'auto': the GPU when this process was given one, else the CPU. In a Ray actor that is what
    Ray reserved for it (``generation.local_model_gpus``): Ray 2.60 leaves CUDA_VISIBLE_DEVICES
    alone for an actor given no GPU, so CUDA alone would put it on a GPU nobody reserved."""
    if device != "auto":
        return device
    granted = _ray_actor_gpus()
    if granted is not None:
        return "cuda" if granted else "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def _ray_actor_gpus() -> list | None:
    """The GPU ids Ray gave this process when it is a Ray actor; None elsewhere."""
    ray = sys.modules.get("ray")  # an engine used outside Ray does not import it
    if ray is None or not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return None
    return ray.get_gpu_ids()


def _pick_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)
