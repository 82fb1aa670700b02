"""GPU check of the train stage's own code and the transformers engine, in one process, no Ray:
`make gpu-check` (or `python tests/gpu/gpu_check.py`); `--device cpu --tiny` runs the same code
on a CPU in the test suite (tests/test_training_gpu_check.py), so it cannot rot.

Training goes through ``themis.training_loop.train``, the function each Ray Train worker's
training process runs, with a local stand-in for the worker's link (``LocalLink``: checkpoints
kept in a folder, as Ray Train keeps them). For each shape (random-init models shaped like
Qwen2-0.5B and Qwen2-1.5B, built from transformers' Qwen2Config; no hub) and each mode (full
fine-tuning, then LoRA through ``themis.lora``), with ZeRO-3, bf16 weights under ``zero.Init``,
gradient checkpointing and the multi-objective loss (cosine on rationale tokens):
1. train to the checkpoint at step ``--resume-at`` and stop there, as a worker that dies after it;
2. resume from that checkpoint to ``--steps`` and check that the step and the loss go on from it;
3. export, and reload the export with the transformers engine (``themis.engines.hf``) for one
   forced single and pairwise verdict.
Then, per shape, on the full fine-tune's export: the engine's batched generation and forced
verdicts (single and pairwise) with tokens/s, and the same model's ``generate()`` in a bare loop
over the same prompts for the ratio. Each part prints tokens/s, MFU against the card's dense bf16
peak (``themis.train_metrics``: 6 FLOPs per parameter per trained token, 2 per generated or read
one; LoRA counted like full fine-tuning, so its MFU overstates useful work) and peak GPU memory.
The last line is ``RESULT key=value ...``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# Qwen2's published shapes (tied embeddings, grouped-query attention); weights are random.
SHAPES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
}
QWEN2_VOCAB = 151936
SPECIAL_IDS = range(4)  # the tokenizer's special tokens (tests.fakes.tiny_model.SPECIAL) come first
MODES = ("full", "lora")


class ResumePoint(Exception):
    """Raised by ``LocalLink`` after the checkpoint the run should stop at, as a dying worker."""


class LocalLink:
    """``training_loop.WorkerLink`` without Ray: rank 0 of 1; each reported checkpoint folder is
    kept under ``keep`` (Ray Train would copy it into the run's storage)."""

    rank, world = 0, 1

    def __init__(self, keep: Path, checkpoint: Path | None = None, stop_at: int | None = None):
        self.keep, self.stop_at = keep, stop_at
        self.checkpoint = str(checkpoint) if checkpoint else None
        self.checkpoint_uri = self.checkpoint
        self.reported: list[tuple[dict[str, Any], Path]] = []

    def report(self, metrics: dict[str, Any], folder: str, name: str) -> None:
        """Keep the folder as checkpoint ``name``; stop the run when it is the one to stop at."""
        kept = self.keep / name
        shutil.rmtree(kept, ignore_errors=True)
        shutil.move(folder, kept)
        self.reported.append((metrics, kept))
        if metrics["step"] == self.stop_at:
            raise ResumePoint(f"stopped after the checkpoint of step {self.stop_at}")


def main() -> None:
    args = _args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    _single_process_env(args.device)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu --tiny to check the code path on a CPU")
    card = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"device: {card}; shapes: {', '.join(args.shapes)}", flush=True)
    began = time.perf_counter()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="themis-gpu-check-"))
    results: dict[str, dict[str, Any]] = {}
    try:
        tokenizer = build_tokenizer(work / "tokenizer")
        for shape in args.shapes:
            base, n_params = build_base_model(shape, tokenizer, work / f"base-{shape}", args)
            for mode in MODES:
                part = f"{shape}-{mode}"
                results[part] = attempt(part, train_part, base, n_params, mode, work / part, args)
                if mode == "full" and "export" in results[part]:
                    gen = f"{shape}-generate"
                    results[gen] = attempt(gen, generation_part, results[part]["export"], gen, n_params, args)
                shutil.rmtree(work / part, ignore_errors=True)  # checkpoints and exports: disk for the next
            shutil.rmtree(base, ignore_errors=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    failed = [part for part, r in results.items() if r.get("problems")]
    print(result_line(card, results, failed, time.perf_counter() - began), flush=True)
    if failed:
        sys.exit(1)


def attempt(name: str, part: Any, *args: Any) -> dict[str, Any]:
    """Run one part; a part that raises is reported and the check goes on to the next (one run
    on a lent GPU should bring back every figure it can)."""
    try:
        return part(*args)
    except Exception as exc:  # noqa: BLE001 - reported here, counted in RESULT, exit status 1
        traceback.print_exc()
        _free(args[-1].device)
        return {"problems": [f"{name}: {type(exc).__name__}: {exc}"]}


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The train stage's loop and the transformers engine on one device.")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="one 2-layer model, small batches (the CPU test)")
    parser.add_argument("--shapes", default=None, help="comma-separated of 0.5b,1.5b (default both; tiny: tiny)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per part (8; tiny 4)")
    parser.add_argument("--resume-at", type=int, default=None, help="the checkpoint to resume from (steps/2)")
    parser.add_argument("--batch", type=int, default=None, help="sequences per step (8; tiny 2)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per sequence (1024; tiny 64)")
    parser.add_argument("--lr", type=float, default=None, help="full fine-tuning's peak LR (2e-4; tiny 3e-3)")
    parser.add_argument("--lora-lr", type=float, default=None, help="LoRA's peak LR (1e-2; tiny 3e-2)")
    parser.add_argument("--gen-requests", type=int, default=None, help="requests per generation part (64; tiny 4)")
    parser.add_argument("--gen-tokens", type=int, default=None, help="new tokens per request (128; tiny 8)")
    parser.add_argument("--gen-batch", type=int, default=None, help="the engine's batch size (32; tiny 4)")
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1), help="torch CPU threads")
    parser.add_argument("--workdir", default=None, help="keep models and checkpoints here (default: a temp dir)")
    args = parser.parse_args()
    tiny = args.tiny
    defaults = {
        "steps": 4 if tiny else 8,
        "batch": 2 if tiny else 8,
        "seq": 64 if tiny else 1024,
        "lr": 3e-3 if tiny else 2e-4,
        "lora_lr": 3e-2 if tiny else 1e-2,  # the adapters start at zero: a random model's needs a big step
        "gen_requests": 4 if tiny else 64,
        "gen_tokens": 8 if tiny else 128,
        "gen_batch": 4 if tiny else 32,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.resume_at = args.resume_at or args.steps // 2
    if not 1 <= args.resume_at < args.steps - 1:
        parser.error("--resume-at must leave at least two steps after it (1 <= resume-at < steps - 1)")
    args.shapes = ["tiny"] if tiny else (args.shapes or "0.5b,1.5b").split(",")
    if unknown := set(args.shapes) - set(SHAPES):
        parser.error(f"unknown shapes {sorted(unknown)}; known: {', '.join(SHAPES)}")
    return args


def _single_process_env(device: str) -> None:
    """What torchrun would set for one process on one device, read by ``deepspeed.init_distributed``."""
    if device == "cpu":
        os.environ["DS_ACCELERATOR"] = "cpu"  # before DeepSpeed's first import
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    for key, value in env.items():
        os.environ.setdefault(key, value)


# --- the model and its data -----------------------------------------------------------------------


def build_tokenizer(folder: Path) -> Any:
    """A byte-level BPE trained in a second on the judge's own prompts (scenarios, passages), so a
    judge prompt takes about as many tokens as with a real tokenizer; the tests' chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.fakes.tiny_model import CHAT_TEMPLATE, CORPUS, SPECIAL

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4096, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 5 + _judge_texts(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|endoftext|>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return fast


def _judge_texts() -> list[str]:
    """Rendered judge prompts of every scenario, single and pairwise, and the shipped passages."""
    passages = [p.read_text() for p in sorted((ROOT / "themis" / "data" / "passages").glob("*.txt"))]
    return [m["content"] for r in judge_requests(len(passages) * 2, 0, constrain=True) for m in r.messages] + passages


def build_base_model(shape: str, tokenizer: Any, folder: Path, args: argparse.Namespace) -> tuple[Path, int]:
    """A random-init Qwen2-shaped model in bf16 with the tokenizer, saved as a Hugging Face folder
    (built on the check's device: a 1.5B model initialises in a second there)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        vocab_size=len(tokenizer) if shape == "tiny" else QWEN2_VOCAB,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **SHAPES[shape],
    )
    torch.manual_seed(0)
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    _free(args.device)
    print(f"{shape}: base model of {n_params / 1e6:.1f}M parameters at {folder}", flush=True)
    return folder, n_params


def write_shards(store: Any, vocab: int, args: argparse.Namespace) -> dict[str, str]:
    """Tokenised splits as the train stage writes them (``themis.train_data.SCHEMA``): rows of
    ``--seq`` tokens, the first half a prompt of random tokens, the second the target, drawn from
    eight tokens: learnable in a few steps by full fine-tuning and LoRA alike, so the loss falls
    enough to tell a resumed run from a fresh start. Every 16th target token and the last are
    score tokens (cross-entropy), the rest rationale (the cosine loss)."""
    import random

    import pyarrow as pa

    from themis.sft import IGNORE, PROMPT, RATIONALE, SCORE
    from themis.train_data import SCHEMA, TOKENIZED

    rng = random.Random(0)
    half, targets = args.seq // 2, rng.sample(range(len(SPECIAL_IDS), vocab), 8)
    kinds = [PROMPT] * half + [
        SCORE if i % 16 == 0 or i == args.seq - half - 1 else RATIONALE for i in range(args.seq - half)
    ]

    def row(split: str, i: int) -> dict[str, Any]:
        prompt = [rng.randrange(len(SPECIAL_IDS), vocab) for _ in range(half)]
        target = [rng.choice(targets) for _ in range(args.seq - half)]
        ids = prompt + target
        labels = [IGNORE] * half + target
        return {"example_id": f"{split}-{i:05d}", "input_ids": ids, "labels": labels, "kinds": kinds} | {
            "length": args.seq,
            "reason": "",
        }

    shards = {}
    for split, n in (("train", args.steps * args.batch), ("validation", args.batch)):
        table = pa.Table.from_pylist([row(split, i) for i in range(n)], schema=SCHEMA)
        store.write_table(f"{TOKENIZED}/{split}/part-0.parquet", table)
        shards[split] = store.path(TOKENIZED, split)
    return shards


# --- training: the train stage's loop, stopped at a checkpoint and resumed ---------------------------


def train_config(base: Path, mode: str, args: argparse.Namespace) -> Any:
    """The ``train`` section a user would write for this part."""
    from themis.config import LoraSettings, LossConfig, TrainConfig

    return TrainConfig(
        base_model=str(base),
        use_gpu=args.device == "cuda",
        cpus_per_worker=args.threads,
        zero_stage=3,
        bf16=True,
        bf16_weights=True,
        gradient_checkpointing=True,
        micro_batch_size=args.batch,
        max_seq_len=args.seq,
        lr=args.lora_lr if mode == "lora" else args.lr,
        warmup_ratio=0.0,
        loss=LossConfig(rationale="cosine"),
        lora=LoraSettings(dropout=0.0) if mode == "lora" else None,
    )


def train_part(base: Path, n_params: int, mode: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train to ``--resume-at`` and stop after its checkpoint; resume to ``--steps``; check the
    step and loss went on from the checkpoint; export and reload the export with the engine."""
    from themis.config import StorageConfig
    from themis.storage import RunStore
    from themis.training_loop import SUMMARY, train

    name = f"{base.name.removeprefix('base-')}-{mode}"
    store = RunStore(StorageConfig(root=str(work)), "run")
    tokenizer = _tokenizer(base)
    config = {
        "train": train_config(base, mode, args),
        "store": store,
        "seed": 0,
        "shards": write_shards(store, len(tokenizer), args),
        "pad_id": tokenizer.pad_token_id,
        "steps_per_epoch": args.steps,
        "total_steps": args.steps,
    }
    kept = work / "checkpoints"
    kept.mkdir(parents=True, exist_ok=True)
    _reset_peak(args.device)
    began = time.perf_counter()
    first = LocalLink(kept, stop_at=args.resume_at)
    try:
        train(config | {"train": config["train"].model_copy(update={"checkpoint_every": args.resume_at})}, first)
        raise AssertionError(f"{name}: the run did not stop at the checkpoint of step {args.resume_at}")
    except ResumePoint:
        pass
    _free(args.device)
    checkpoint = first.reported[-1][1]
    state = json.loads((checkpoint / "themis_state.json").read_text())
    train(config, LocalLink(kept, checkpoint=checkpoint))
    summary = store.read_json(SUMMARY)
    seconds = time.perf_counter() - began
    result = _training_figures(summary, n_params, args)
    result |= {"peak_gpu_gib": _peak_gib(args.device), "seconds": round(seconds, 1)}
    result["problems"] = check_resumed(name, state, summary, args)
    shutil.rmtree(kept, ignore_errors=True)
    _free(args.device)
    result["export"] = str(store.local_dir("model"))
    result |= reload_export(result["export"], args)
    print(f"{name}: {json.dumps({k: v for k, v in result.items() if k != 'export'})}", flush=True)
    return result


def check_resumed(name: str, state: dict[str, Any], summary: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """What is wrong with the resumed run, if anything: it must start at the checkpoint's step,
    keep its history, and its first loss must go on from the checkpoint's (a fresh start would be
    back near the first step's loss), which needs a loss that fell before the checkpoint."""
    k, losses = args.resume_at, summary["train_loss"]
    print(f"{name}: resumed at step {summary['resumed_from_step']}: losses {[round(x, 4) for x in losses]}")
    problems = []
    if state["step"] != k or summary["resumed_from_step"] != k or summary["step"] != args.steps:
        problems.append(f"{name}: steps: checkpoint {state['step']}, resumed from {summary['resumed_from_step']}")
    if len(losses) != args.steps or losses[:k] != state["train_loss"]:
        problems.append(f"{name}: the loss history before the checkpoint was lost: {losses}")
    drop = losses[0] - losses[k - 1]
    if drop <= 0.05 * losses[0]:
        problems.append(
            f"{name}: the loss fell under 5% before the checkpoint, so a resume cannot be told from "
            f"a fresh start: raise --lr / --lora-lr"
        )
    elif losses[k] >= losses[0] - drop / 2:
        problems.append(f"{name}: the resumed run's loss went back towards the first step's: {losses}")
    for problem in problems:
        print(f"PROBLEM {problem}", flush=True)
    return problems


def _training_figures(summary: dict[str, Any], n_params: int, args: argparse.Namespace) -> dict[str, Any]:
    """Tokens/s and MFU over the steady steps (each run's first step pays start-up and row reads)."""
    seconds = summary["step_seconds"]
    steady = seconds[1 : args.resume_at] + seconds[args.resume_at + 1 :]
    tokens_per_s = args.batch * args.seq * len(steady) / sum(steady)
    return {
        "tokens_per_s": round(tokens_per_s, 1),
        "mfu": _mfu(6 * n_params * tokens_per_s, args.device),
        "loss_first": round(summary["train_loss"][0], 4),
        "loss_last": round(summary["train_loss"][-1], 4),
        "peak_rss_mb": summary["peak_rss_mb"][0],
    }


def reload_export(folder: str, args: argparse.Namespace) -> dict[str, Any]:
    """Load the export with the transformers engine and have it give one forced verdict of each
    kind; their verdicts must parse."""
    from themis.judging import parse_verdict

    engine = build_check_engine(folder, args)
    requests = judge_requests(1, 2, constrain=True)
    kinds = ["single", "pairwise"]
    for kind, result in zip(kinds, engine.generate([requests[0], requests[1]])):
        assert result.ok, f"{folder}: {kind} verdict failed: {result.error}"
        parse_verdict(kind, result.text)  # raises ParseError if the forced sentence is not there
    del engine
    _free(args.device)
    return {"export_reloaded": True}


# --- the transformers engine on the export ----------------------------------------------------------


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
    from themis.judging import judge_request, pairwise_calls, single_call
    from themis.scenarios import load_scenarios

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
    _reset_peak(args.device)
    half = len(forced) // 2
    parts = {
        "generate": _timed(engine, free, args),
        "verdicts_single": _timed(engine, forced[:half], args),
        "verdicts_pairwise": _timed(engine, forced[half:], args),
        "bare_generate": bare_generate(engine, free, args),
    }
    for part in parts.values():
        part["mfu"] = _mfu(2 * n_params * part.pop("all_tokens_per_s"), args.device)
    result: dict[str, Any] = parts | {"peak_gpu_gib": _peak_gib(args.device)}
    result["bare_over_engine"] = round(parts["bare_generate"]["tokens_per_s"] / parts["generate"]["tokens_per_s"], 3)
    del engine
    _free(args.device)
    print(f"{name}: {json.dumps(result)}", flush=True)
    return result


def _timed(engine: Any, requests: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    from themis.judging import parse_verdict

    began = _sync_time(args.device)
    results = engine.generate(requests)
    seconds = _sync_time(args.device) - began
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
    began, new, read = _sync_time(args.device), 0, 0
    with torch.inference_mode():
        for start in range(0, len(texts), args.gen_batch):
            enc = tok(
                texts[start : start + args.gen_batch], return_tensors="pt", padding=True, add_special_tokens=False
            )
            enc = enc.to(model.device)
            out = model.generate(**enc, max_new_tokens=args.gen_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            new += int((out[:, enc["input_ids"].shape[1] :] != tok.pad_token_id).sum())
            read += int(enc["attention_mask"].sum())
    seconds = _sync_time(args.device) - began
    return {
        "requests": len(texts),
        "tokens_per_s": round(new / seconds, 1),
        "requests_per_s": round(len(texts) / seconds, 2),
        "all_tokens_per_s": (new + read) / seconds,
    }


# --- figures ------------------------------------------------------------------------------------------


def _mfu(flops_per_s: float, device: str) -> float | None:
    """Model FLOPs utilisation against the card's dense bf16 peak; None off a known GPU."""
    import torch

    from themis.train_metrics import peak_bf16_flops

    peak = peak_bf16_flops(torch.cuda.get_device_name(0)) if device == "cuda" else None
    return round(flops_per_s / peak, 4) if peak else None


def result_line(card: str, results: dict[str, dict[str, Any]], failed: list[str], seconds: float) -> str:
    """One line: the card, the parts that failed, then per part its tokens/s, MFU and peak memory."""
    fields: dict[str, Any] = {"card": card.replace(" ", "_"), "seconds": round(seconds, 1)}
    fields["failed"] = ",".join(failed) or "none"
    for part, r in results.items():
        key = part.replace("-", "_")
        if part.endswith("-generate") and "generate" in r:
            shape = part.removesuffix("-generate")
            for sub in ("generate", "bare_generate", "verdicts_single", "verdicts_pairwise"):
                fields |= {f"{shape}_{sub}_{k}": r[sub][k] for k in ("tokens_per_s", "mfu")}
            fields |= {f"{shape}_bare_over_engine": r["bare_over_engine"], f"{key}_peak_gpu_gib": r["peak_gpu_gib"]}
        elif "tokens_per_s" in r:
            fields |= {f"{key}_{k}": r[k] for k in ("tokens_per_s", "mfu", "peak_gpu_gib", "seconds")}
    return "RESULT " + " ".join(f"{k}={v}" for k, v in fields.items())


def _tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _sync_time(device: str) -> float:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def _reset_peak(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None


def _free(device: str) -> None:
    """Drop what a finished part left (DeepSpeed engines hold reference cycles)."""
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
