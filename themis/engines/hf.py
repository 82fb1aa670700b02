"""A local engine on Hugging Face transformers: batched generation on CPU or GPU.

It can force a reply's opening and constrain the token right after it to a few choices (the
score digit, the verdict letter). A 135M model follows formats poorly; forcing the verdict
sentence this way makes every output parseable without changing what the model would rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from themis.config import TransformersEngineConfig
from themis.engines.base import GenerationRequest, GenerationResult
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
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.device).eval()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """One result per request; a batch that fails marks its rows with the error."""
        results: list[GenerationResult | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: _sampling_key(requests[i]))
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
        chosen = [""] * len(batch)
        if first.choices:
            ids, mask, chosen = self._force_choice(ids, mask, first)
            ids, mask = self._append_text(ids, mask, first.closing)
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=first.max_tokens,
            do_sample=first.temperature > 0,
            temperature=first.temperature if first.temperature > 0 else None,
            top_p=first.top_p if first.temperature > 0 else None,
            top_k=None,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        generated = out[:, ids.shape[1] :]
        new = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        forced = ids.shape[1] - enc["input_ids"].shape[1]  # the chosen token and the closing
        completion_tokens = ((generated != self.tokenizer.pad_token_id).sum(dim=1) + forced).tolist()
        closing = first.closing if first.choices else ""
        return [
            GenerationResult(text=r.prefix + c + closing + t, prompt_tokens=p, completion_tokens=n)
            for r, c, t, p, n in zip(batch, chosen, new, prompt_tokens, completion_tokens)
        ]

    def _force_choice(self, ids: torch.Tensor, mask: torch.Tensor, req: GenerationRequest):
        """Pick the next token among the choices' first tokens (greedy or sampled) and append it."""
        choice_ids = [self.tokenizer.encode(c, add_special_tokens=False)[0] for c in req.choices]
        if len(set(choice_ids)) != len(choice_ids):
            raise ValueError(f"choices {req.choices} do not start with distinct tokens")
        logits = self.model(input_ids=ids, attention_mask=mask).logits[:, -1, :]
        scores = logits[:, choice_ids].float()
        if req.temperature > 0:
            picks = torch.multinomial(torch.softmax(scores / req.temperature, dim=-1), 1).squeeze(1)
        else:
            picks = scores.argmax(dim=-1)
        picked = torch.tensor(choice_ids, device=ids.device)[picks].unsqueeze(1)
        ids = torch.cat([ids, picked], dim=1)
        mask = torch.cat([mask, torch.ones_like(picked)], dim=1)
        return ids, mask, [req.choices[int(p)] for p in picks]

    def _append_text(self, ids: torch.Tensor, mask: torch.Tensor, text: str):
        """Append the same forced text (e.g. the closing "]]") to every row."""
        if not text:
            return ids, mask
        extra = torch.tensor(self.tokenizer.encode(text, add_special_tokens=False), device=ids.device)
        extra = extra.unsqueeze(0).expand(ids.shape[0], -1)
        return torch.cat([ids, extra], dim=1), torch.cat([mask, torch.ones_like(extra)], dim=1)

    def render_prompt(self, messages: list[dict[str, str]]) -> str:
        """The chat template applied, ready for the assistant's reply."""
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _sampling_key(r: GenerationRequest) -> tuple:
    # Requests in one batch must share sampling settings and constraints; a seed matters only
    # when sampling, so greedy rows with different seeds still share a batch.
    seed = (r.seed or 0) if r.temperature > 0 else 0
    return (r.max_tokens, r.temperature, r.top_p, seed, r.choices, r.closing)


def _pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _pick_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)
