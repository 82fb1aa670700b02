"""GPU check of the train stage's own code and the transformers engine, in one process, no Ray:
`make gpu-check` (or `python tests/gpu/gpu_check.py`); `--device cpu --tiny` runs the same code
on a CPU in the test suite (tests/test_training_gpu_check.py), so it cannot rot.

Training goes through ``themis.training.loop.train``, the function each Ray Train worker's
training process runs, with ``LocalLink`` standing in for the worker's side (rank 0 of 1,
checkpoints kept in a folder as Ray Train keeps them). For each shape (random-init models shaped
like Qwen2-0.5B and Qwen2-1.5B, from transformers' Qwen2Config; no hub) and each mode (full
fine-tuning, then LoRA through ``themis.training.lora``), with ZeRO-3, bf16 weights under ``zero.Init``,
gradient checkpointing and the multi-objective loss (cosine on rationale tokens):
1. train to the checkpoint at step ``--resume-at`` and stop there, as a worker that dies after it;
2. resume from that checkpoint to ``--steps``; the step and the loss must go on from it;
3. export, and reload the export with the transformers engine for a forced verdict of each kind.
Then, per shape, on the full fine-tune's export, the engine parts (``engine_check``): batched
generation and forced verdicts with tokens/s, against ``generate()`` in a bare loop. Each part
prints tokens/s, MFU against the card's dense bf16 peak (6 FLOPs per parameter per trained token,
2 per generated or read one; LoRA counted like full fine-tuning, so its MFU overstates useful
work) and peak GPU memory. Problems are listed as ``PROBLEM ...`` lines, the last line is
``RESULT key=value ...``, and the exit status is 1 if any part failed.
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

from tests.gpu.engine_check import (  # noqa: E402 - after the path that makes it importable
    generation_part,
    judge_requests,
    mfu,
    peak_gib,
    release_device,
    reload_export,
    reset_peak,
)

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
    """``themis.training.loop.WorkerLink`` without Ray: rank 0 of 1; each reported checkpoint folder is
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
    print(f"device: {card}; shapes: {', '.join(args.shapes)}; {_versions()}", flush=True)
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
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # the loop's group (NCCL on a GPU)
    failed = [part for part, r in results.items() if r.get("problems")]
    for problem in (p for r in results.values() for p in r.get("problems", [])):
        print(f"PROBLEM {problem}", flush=True)
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
        _free(args[-1].device)  # every part takes the check's arguments last
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
    parser.add_argument("--workdir", default=None, help="where models and checkpoints go (default: a temp dir)")
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


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    def one(name: str) -> str:
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            return f"{name} missing"

    return ", ".join(one(n) for n in ("torch", "transformers", "deepspeed", "peft", "accelerate", "pydantic"))


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
    """Tokenised splits as the train stage writes them (``themis.training.data.SCHEMA``): rows of
    ``--seq`` tokens, the first half a prompt of random tokens, the second the target, drawn from
    eight tokens: learnable in a few steps by full fine-tuning and LoRA alike, so the loss falls
    enough to tell a resumed run from a fresh start. Every 16th target token and the last are
    score tokens (cross-entropy), the rest rationale (the cosine loss)."""
    import random

    import pyarrow as pa

    from themis.curation.sft import IGNORE, PROMPT, RATIONALE, SCORE
    from themis.training.data import SCHEMA, TOKENIZED

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
    import torch

    from themis.config import StorageConfig
    from themis.storage import RunStore

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
    reset_peak(args.device)
    began = time.perf_counter()
    state, summary = stopped_and_resumed(name, config, work / "checkpoints", args)
    seconds = time.perf_counter() - began
    result = _training_figures(summary, n_params, args)
    result |= {"peak_gpu_gib": peak_gib(args.device), "seconds": round(seconds, 1)}
    result["problems"] = check_resumed(name, state, summary, args)
    _free(args.device)
    result["engines_left"] = _engines_alive()  # each would hold its model and optimizer state
    if result["engines_left"]:
        result["problems"].append(f"{name}: {result['engines_left']} DeepSpeed engine(s) still alive after the runs")
    if args.device == "cuda":  # what the runs left on the device: about 0 unless something holds them
        result["gpu_gib_held_after"] = round(torch.cuda.memory_allocated() / 2**30, 2)
    result["export"] = str(store.local_dir("model"))
    result |= reload_export(result["export"], args)
    print(f"{name}: {json.dumps({k: v for k, v in result.items() if k != 'export'})}", flush=True)
    return result


def stopped_and_resumed(name: str, config: dict[str, Any], kept: Path, args: argparse.Namespace) -> tuple[dict, dict]:
    """Train to the checkpoint at ``--resume-at`` and stop there, as a worker that dies after it;
    then resume from that checkpoint to the end. Returns the checkpoint's state and the summary."""
    from themis.training.checkpoints import STATE_FILE
    from themis.training.loop import SUMMARY, train

    kept.mkdir(parents=True, exist_ok=True)
    first = LocalLink(kept, stop_at=args.resume_at)
    try:
        train(config | {"train": config["train"].model_copy(update={"checkpoint_every": args.resume_at})}, first)
        raise AssertionError(f"{name}: the run did not stop at the checkpoint of step {args.resume_at}")
    except ResumePoint:
        pass
    _free(args.device)
    checkpoint = first.reported[-1][1]
    state = json.loads((checkpoint / STATE_FILE).read_text())
    train(config, LocalLink(kept, checkpoint=checkpoint))
    shutil.rmtree(kept, ignore_errors=True)  # DeepSpeed checkpoints: 12 bytes a parameter
    return state, config["store"].read_json(SUMMARY)


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
    return problems


def _training_figures(summary: dict[str, Any], n_params: int, args: argparse.Namespace) -> dict[str, Any]:
    """Tokens/s and MFU over the steady steps (each run's first step pays start-up and row reads)."""
    seconds = summary["step_seconds"]
    steady = seconds[1 : args.resume_at] + seconds[args.resume_at + 1 :]
    tokens_per_s = args.batch * args.seq * len(steady) / sum(steady)
    return {
        "tokens_per_s": round(tokens_per_s, 1),
        "mfu": mfu(6 * n_params * tokens_per_s, args.device),
        "loss_first": round(summary["train_loss"][0], 4),
        "loss_last": round(summary["train_loss"][-1], 4),
    }


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


def _free(device: str) -> None:
    """Drop what a finished run left, so the next one finds the device empty."""
    _release_deepspeed()
    release_device(device)


def _engines_alive() -> int:
    from deepspeed import DeepSpeedEngine

    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, DeepSpeedEngine))


def _release_deepspeed() -> None:
    """Let go of the DeepSpeed engines finished runs left. The training loop never destroys its
    engine (its process ends instead), and DeepSpeed 0.19 keeps a ZeRO-3 engine alive from two
    places: its gradient hooks in torch's C++ autograd nodes, out of the garbage collector's sight,
    until ``destroy()`` removes them, and module globals that hold its model (the forward stack
    ``parameter_offload.FWD_MODULE_STACK``, pushed at set-up and never popped, and a class-wide
    ``lru_cache`` of ``PartitionedParameterCoordinator``). Either alone frees nothing: seen on a
    CPU, after two parts all four engines were alive; with both, none. On a GPU each would keep
    its model and optimizer state there."""
    if "deepspeed" not in sys.modules:
        return
    from deepspeed import DeepSpeedEngine
    from deepspeed.runtime.zero import parameter_offload
    from deepspeed.runtime.zero.partitioned_param_coordinator import PartitionedParameterCoordinator

    gc.collect()
    engines = [o for o in gc.get_objects() if isinstance(o, DeepSpeedEngine)]
    while engines:
        engines.pop().destroy()
    parameter_offload.FWD_MODULE_STACK.clear()
    wrapper = PartitionedParameterCoordinator._PartitionedParameterCoordinator__params_to_release
    caches = [c.cell_contents for c in wrapper.__closure__ or () if hasattr(c.cell_contents, "cache_clear")]
    for cache in caches:
        cache.cache_clear()
    if not caches:
        print("warning: DeepSpeed's parameter cache was not found: earlier runs may stay in memory", flush=True)


if __name__ == "__main__":
    main()
