"""The GPU check's engine parts (``tests/gpu/gpu_check.py``): an export reloaded by the
transformers engine (``themis.engines.hf``) for one forced verdict of each kind; the engine's
batched generation and forced verdicts (single, pairwise) with tokens/s against the same model's
``generate()`` in a bare loop over the same prompts; and the device figures (MFU against the
card's dense bf16 peak, peak GPU memory) that the training parts share."""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def reload_export(folder: str, args: argparse.Namespace) -> dict[str, Any]:
    """Load the export with the transformers engine and have it give one forced verdict of each
    kind; their verdicts must parse."""
    from themis.judge.call import parse_verdict

    engine = build_check_engine(folder, args)
    requests = judge_requests(1, 2, constrain=True)
    kinds = ["single", "pairwise"]
    for kind, result in zip(kinds, engine.generate([requests[0], requests[1]])):
        assert result.ok, f"{folder}: {kind} verdict failed: {result.error}"
        parse_verdict(kind, result.text)  # raises ParseError if the forced sentence is not there
    del engine
    release_device(args.device)
    return {"export_reloaded": True}


def build_check_engine(folder: str, args: argparse.Namespace, batch_size: int | None = None) -> Any:
    from themis.config import TransformersEngineConfig
    from themis.engines.hf import TransformersEngine

    cfg = TransformersEngineConfig(
        model=folder, device=args.device, dtype="bfloat16", batch_size=batch_size or args.gen_batch
    )
    return TransformersEngine(cfg)


def judge_requests(n: int, max_tokens: int, constrain: bool) -> list[Any]:
    """``n`` single-grading requests, then ``n`` pairwise ones, over the shipped passages."""
    from themis.config import Sampling
    from themis.judge.call import judge_request, pairwise_calls, single_call
    from themis.judge.scenarios import load_scenarios

    passages = [p.read_text() for p in sorted((ROOT / "themis" / "data" / "passages").glob("*.txt"))]
    scenarios = list(load_scenarios())
    sampling = Sampling(max_tokens=max(1, max_tokens))
    calls = []
    for kind in ("single", "pairwise"):
        for i in range(n):
            scenario, text = scenarios[i % len(scenarios)], passages[i % len(passages)]
            question = f"Summarise this passage in two sentences ({i}):\n{text}"
            first, second = text[: 200 + 7 * i], text[-(200 + 5 * i) :]
            single = single_call(scenario, question, first)
            calls.append(
                single if kind == "single" else pairwise_calls(scenario, question, first, second, both_orders=False)[0]
            )
    return [judge_request(c, sampling, constrain=constrain) for c in calls]


def generation_part(folder: str, name: str, n_params: int, args: argparse.Namespace) -> dict[str, Any]:
    """The engine's batched generation and forced verdicts (single, pairwise) on the export, with
    tokens/s, and the same model's ``generate()`` in a bare loop over the same prompts; the ratio
    is bare tokens/s over the engine's (the goal: at most 2)."""
    engine = build_check_engine(folder, args)
    free = judge_requests(args.gen_requests // 2, args.gen_tokens, constrain=False)
    forced = judge_requests(args.gen_requests // 2, args.gen_tokens, constrain=True)
    engine.generate(free)  # warm-up: kernels, allocator, the batch's shapes
    engine.generate(forced)
    reset_peak(args.device)
    half = len(forced) // 2
    parts = {
        "generate": _timed(engine, free, args),
        "verdicts_single": _timed(engine, forced[:half], args),
        "verdicts_pairwise": _timed(engine, forced[half:], args),
        "bare_generate": bare_generate(engine, free, args),
    }
    for part in parts.values():
        part["mfu"] = mfu(2 * n_params * part.pop("all_tokens_per_s"), args.device)
    result: dict[str, Any] = parts | {"peak_gpu_gib": peak_gib(args.device)}
    result["bare_over_engine"] = round(parts["bare_generate"]["tokens_per_s"] / parts["generate"]["tokens_per_s"], 3)
    del engine
    release_device(args.device)
    print(f"{name}: {json.dumps(result)}", flush=True)
    return result


def _timed(engine: Any, requests: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    from themis.judge.call import parse_verdict

    began = sync_time(args.device)
    results = engine.generate(requests)
    seconds = sync_time(args.device) - began
    failed = [r.error for r in results if not r.ok]
    assert not failed, f"engine calls failed: {failed[:3]}"
    if requests[0].choices:  # forced verdicts: every one parses
        for req, res in zip(requests, results):
            parse_verdict("pairwise" if "A" in req.choices else "single", res.text)
    new = sum(r.completion_tokens for r in results)
    read = sum(r.prompt_tokens for r in results)
    return {
        "requests": len(requests),
        "tokens_per_s": round(new / seconds, 1),
        "requests_per_s": round(len(requests) / seconds, 2),
        "all_tokens_per_s": (new + read) / seconds,
    }


def bare_generate(engine: Any, requests: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    """``model.generate()`` on the engine's own model and tokenizer, batch by batch in the same
    batches the engine forms (sorted by length), greedy, the same new-token limit."""
    import torch

    tok, model = engine.tokenizer, engine.model
    texts = sorted((engine.render_prompt(r.messages) for r in requests), key=len)
    began, new, read = sync_time(args.device), 0, 0
    with torch.inference_mode():
        for start in range(0, len(texts), args.gen_batch):
            enc = tok(
                texts[start : start + args.gen_batch], return_tensors="pt", padding=True, add_special_tokens=False
            )
            enc = enc.to(model.device)
            out = model.generate(**enc, max_new_tokens=args.gen_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            new += int((out[:, enc["input_ids"].shape[1] :] != tok.pad_token_id).sum())
            read += int(enc["attention_mask"].sum())
    seconds = sync_time(args.device) - began
    return {
        "requests": len(texts),
        "tokens_per_s": round(new / seconds, 1),
        "requests_per_s": round(len(texts) / seconds, 2),
        "all_tokens_per_s": (new + read) / seconds,
    }


# --- figures ------------------------------------------------------------------------------------------


def mfu(flops_per_s: float, device: str) -> float | None:
    """Model FLOPs utilisation against the card's dense bf16 peak; None off a known GPU."""
    import torch

    from themis.training.metrics import peak_bf16_flops

    peak = peak_bf16_flops(torch.cuda.get_device_name(0)) if device == "cuda" else None
    return round(flops_per_s / peak, 4) if peak else None


def sync_time(device: str) -> float:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def reset_peak(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None


def release_device(device: str) -> None:
    """Give back what dropped objects held (the CUDA cache allocator keeps freed blocks)."""
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
