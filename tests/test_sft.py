"""The pure SFT core: label masking, truncation and padding (curation.sft); the step plan and the
DeepSpeed config (training.plan)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from themis.config import TrainConfig
from themis.curation import sft
from themis.training import plan

CHAT = [
    {"role": "system", "content": "You are a judge."},
    {"role": "user", "content": "Rate the response to the instruction on a scale of 1 to 5."},
    {"role": "assistant", "content": "Strengths: clear. Overall rating: [[4]]"},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _target_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text + tokenizer.eos_token, add_special_tokens=False)["input_ids"]


def test_labels_cover_only_the_target(tokenizer):
    ex = sft.build_example(tokenizer, CHAT, max_seq_len=512)
    target = _target_ids(tokenizer, CHAT[-1]["content"])
    n_prompt = len(ex["input_ids"]) - len(target)
    assert ex["labels"] == [sft.IGNORE] * n_prompt + target
    assert ex["input_ids"][n_prompt:] == target
    assert tokenizer.decode(ex["input_ids"]).startswith("<|im_start|>system\nYou are a judge.")
    assert tokenizer.decode(ex["input_ids"][:n_prompt]).endswith("<|im_start|>assistant\n")


def test_long_prompt_is_cut_from_the_left_and_target_kept(tokenizer):
    full = sft.build_example(tokenizer, CHAT, max_seq_len=512)
    target = _target_ids(tokenizer, CHAT[-1]["content"])
    short = sft.build_example(tokenizer, CHAT, max_seq_len=len(target) + 5)
    assert len(short["input_ids"]) == len(target) + 5
    assert short["input_ids"] == full["input_ids"][-(len(target) + 5) :]
    assert short["labels"][-len(target) :] == target
    assert short["labels"][:5] == [sft.IGNORE] * 5


def test_target_that_cannot_fit_raises(tokenizer):
    with pytest.raises(ValueError, match="does not fit"):
        sft.build_example(tokenizer, CHAT, max_seq_len=3)
    with pytest.raises(ValueError, match="final assistant"):
        sft.build_example(tokenizer, CHAT[:2], max_seq_len=64)


def test_collate_pads_right():
    batch = sft.collate(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}],
        pad_id=0,
    )
    assert batch == {
        "input_ids": [[5, 6, 7], [8, 0, 0]],
        "labels": [[-100, 6, 7], [8, -100, -100]],
        "attention_mask": [[1, 1, 1], [1, 0, 0]],
    }


def test_epoch_plan_gives_ranks_disjoint_equal_shards():
    plans = [plan.epoch_plan(19, epoch=1, seed=3, rank=r, world_size=2, micro_batch=2, grad_accum=2) for r in (0, 1)]
    assert [len(p) for p in plans] == [2, 2] == [plan.steps_per_epoch(19, 2, 2, 2)] * 2
    seen = [i for p in plans for step in p for micro in step for i in micro]
    assert len(seen) == len(set(seen)) == 16
    assert plans[0] == plan.epoch_plan(19, 1, 3, 0, 2, 2, 2)  # deterministic, so resume can skip
    assert plans[0] != plan.epoch_plan(19, 2, 3, 0, 2, 2, 2)  # reshuffled each epoch


def test_eval_plan_has_equal_pass_counts_and_zero_weight_fillers():
    plans = [plan.eval_plan(5, rank=r, world_size=2, micro_batch=2) for r in (0, 1)]
    assert plans[0] == [([0, 2], 1.0), ([4], 1.0)]
    assert plans[1] == [([1, 3], 1.0), ([0], 0.0)]


def test_lr_factor_warms_up_then_decays_and_never_stalls():
    factors = [plan.lr_factor(s, warmup_steps=2, total=6) for s in range(6)]
    assert factors == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    assert plan.lr_factor(0, 0, 1) == 1.0
    assert plan.total_steps(8, 3, None) == 24 and plan.total_steps(8, 3, 5) == 5


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_config_per_stage(stage):
    cfg = TrainConfig(zero_stage=stage, bf16=stage == 3, micro_batch_size=2, grad_accum=4)
    ds = plan.build_deepspeed_config(cfg, world_size=2, total_steps=10)
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["train_batch_size"] == 16
    assert ds["train_micro_batch_size_per_gpu"] == 2 and ds["gradient_accumulation_steps"] == 4
    assert ds["gradient_clipping"] == 1.0
    assert ds["bf16"] == {"enabled": stage == 3}
    gather = ds["zero_optimization"].get("stage3_gather_16bit_weights_on_model_save")
    assert gather is (True if stage == 3 else None)
    assert "optimizer" not in ds and "scheduler" not in ds


def test_sft_imports_no_heavy_stack():
    code = (
        "import sys, themis.curation.sft; print(sorted(m for m in ('torch', 'ray', 'deepspeed') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
