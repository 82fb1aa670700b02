"""GPU check of the train stage's parts, without Ray: `make gpu-check`
(or `python tests/gpu/gpu_check.py`; `--device cpu --tiny` runs the same code on a CPU in a minute).

Needs torch, transformers, deepspeed and peft (no Ray, no hub: the model is random). On one GPU it
builds a model shaped like Qwen2-0.5B (24 layers, hidden 896, vocab 151,936, tied embeddings,
~494M parameters) inside DeepSpeed's ZeRO-3 ``zero.Init`` (through transformers' DeepSpeed
integration, as the train stage does), in bf16, and runs a few optimizer steps of each:
1. full fine-tuning with plain cross-entropy;
2. the multi-objective loss (``themis.judge_loss``: CE on score tokens, cosine on rationale tokens);
3. LoRA (peft, r=16 on every attention and MLP projection) with the multi-objective loss.
For each it prints tokens/s, MFU against the card's dense bf16 peak (``themis.train_metrics``;
6 FLOPs per parameter per token, so LoRA's MFU is an overestimate of useful work) and peak memory.
Ends with `RESULT tokens_per_s=<full> mfu=<full> ...`. Sized to finish well under 8 minutes.
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

QWEN2_05B = dict(
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rope_theta=1_000_000.0,
    tie_word_embeddings=True,
)
TINY = dict(
    QWEN2_05B, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4
)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PHASES = ("full-ce", "multi-objective", "lora+multi-objective")


def main() -> None:
    args = _args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch/transformers renames, once per step
    if args.device == "cpu":
        os.environ["DS_ACCELERATOR"] = "cpu"  # before DeepSpeed's first import
    _single_process_env()
    import deepspeed
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu --tiny to check the code path on a CPU")
    deepspeed.init_distributed(dist_backend="nccl" if args.device == "cuda" else "gloo")
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    print(f"device: {torch.cuda.get_device_name(0) if args.device == 'cuda' else 'cpu'}", flush=True)
    results = {phase: _run_phase(phase, args, device) for phase in PHASES}
    full = results["full-ce"]
    fields = " ".join(f"{k}={v}" for k, v in full.items())
    extra = " ".join(
        f"{p.replace('+', '_').replace('-', '_')}_tokens_per_s={results[p]['tokens_per_s']}" for p in PHASES[1:]
    )
    print(f"RESULT {fields} {extra}", flush=True)


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="GPU check: ZeRO-3 bf16, multi-objective loss, LoRA.")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model instead of Qwen2-0.5B's shape")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per phase (the first 2 are warm-up)")
    parser.add_argument("--batch", type=int, default=8, help="sequences per step")
    parser.add_argument("--seq", type=int, default=1024, help="tokens per sequence")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    return parser.parse_args()


def _single_process_env() -> None:
    """What a launcher would set, for one process on one device."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(port))


def _ds_config(batch: int) -> dict:
    return {
        "train_batch_size": batch,
        "train_micro_batch_size_per_gpu": batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "bf16": {"enabled": True},
        "zero_optimization": {"stage": 3},
        "steps_per_print": 10**9,
    }


def _build(phase: str, args: argparse.Namespace):
    """A ZeRO-3 engine: the model built partitioned under zero.Init, LoRA-wrapped for that phase."""
    import deepspeed
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config
    from transformers.integrations import HfDeepSpeedConfig, unset_hf_deepspeed_config

    ds_config = _ds_config(args.batch)
    hf_ds = HfDeepSpeedConfig(ds_config)  # from_config builds inside zero.Init while this lives
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(Qwen2Config(**(TINY if args.tiny else QWEN2_05B)), dtype=torch.bfloat16)
    del hf_ds
    unset_hf_deepspeed_config()
    if phase.startswith("lora"):
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS))
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    return engine, n_params


def _batch(vocab: int, args: argparse.Namespace, device, step: int) -> dict:
    """Random tokens; the second half of each sequence is the target, every 16th target token a score token."""
    import torch

    from themis.judge_loss import RATIONALE, SCORE

    g = torch.Generator().manual_seed(step)
    ids = torch.randint(0, vocab, (args.batch, args.seq), generator=g)
    labels, kinds = ids.clone(), torch.full_like(ids, RATIONALE)
    labels[:, : args.seq // 2], kinds[:, : args.seq // 2] = -100, 0
    kinds[:, args.seq // 2 :: 16] = SCORE
    return {"input_ids": ids.to(device), "labels": labels.to(device), "kinds": kinds.to(device)}


def _run_phase(phase: str, args: argparse.Namespace, device) -> dict:
    import deepspeed
    import torch

    from themis.judge_loss import judge_loss
    from themis.train_metrics import mfu, peak_bf16_flops

    engine, n_params = _build(phase, args)
    vocab = (TINY if args.tiny else QWEN2_05B)["vocab_size"]
    rationale = "ce" if phase == "full-ce" else "cosine"
    times = []
    for step in range(args.steps):
        batch = _batch(vocab, args, device, step)
        began = time.perf_counter()
        table = None
        if rationale != "ce":
            weight = engine.module.get_output_embeddings().weight
            with deepspeed.zero.GatheredParameters([weight]):
                table = weight.detach().clone()
        logits = engine(input_ids=batch["input_ids"]).logits
        parts = judge_loss(logits, batch["labels"], batch["kinds"], table, rationale=rationale)
        engine.backward(parts.total)
        engine.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
        print(
            f"{phase}: step {step + 1} loss={parts.total.item():.4f} score={parts.score.item():.4f} "
            f"rationale={parts.rationale.item():.4f} {times[-1]:.2f}s",
            flush=True,
        )
    return _report(phase, engine, n_params, args, times, device, mfu, peak_bf16_flops)


def _report(phase, engine, n_params, args, times, device, mfu, peak_bf16_flops) -> dict:
    import torch

    steady = times[2:] or times
    tokens_per_s = args.batch * args.seq * len(steady) / sum(steady)
    peak = peak_bf16_flops(torch.cuda.get_device_name(0)) if device.type == "cuda" else None
    result = {
        "params": n_params,
        "tokens_per_s": round(tokens_per_s, 1),
        "mfu": round(mfu(n_params, tokens_per_s, peak), 4) if peak else None,
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
    }
    print(f"{phase}: {result}", flush=True)
    del engine
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return result


if __name__ == "__main__":
    main()
