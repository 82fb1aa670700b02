"""The train stage's section: the student, Ray Train + DeepSpeed, the loss and LoRA."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from themis.config.base import Strict


class LossConfig(Strict):
    """The paper's multi-objective loss: cross-entropy on score/format tokens, an embedding-similarity
    loss on rationale tokens. The default (``rationale: ce``) is plain cross-entropy on every target token."""

    rationale: Literal["ce", "mse", "cosine"] = Field(
        "ce",
        description="Loss on rationale tokens: 'ce' (cross-entropy, like score tokens), or 'mse' / 'cosine' between "
        "the expected output embedding (softmax probabilities x embedding matrix) and the true token's embedding.",
    )
    score_weight: float = Field(1.0, ge=0, description="Weight of the cross-entropy on score and format tokens.")
    rationale_weight: float = Field(1.0, ge=0, description="Weight of the rationale part.")

    @model_validator(mode="after")
    def _some_weight(self) -> LossConfig:
        if self.score_weight == 0 and self.rationale_weight == 0:
            raise ValueError("train.loss: score_weight and rationale_weight cannot both be 0 (nothing to learn)")
        return self


class LoraSettings(Strict):
    """LoRA adapters through peft; the base weights stay frozen."""

    r: int = Field(16, ge=1, description="Rank of the adapter matrices.")
    alpha: float = Field(32.0, gt=0, description="Scaling numerator: the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        description="Names of the Linear modules that get adapters (Llama/Qwen naming by default).",
    )


class TrainConfig(Strict):
    """The train stage: the student fine-tuned on the training split by Ray Train workers running DeepSpeed."""

    base_model: str = Field("builtin:smollm2-135m-instruct", description="Student to fine-tune.")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (one per GPU on a cluster).")
    use_gpu: bool = Field(False, description="Give each worker a GPU (NCCL); otherwise train on CPU (gloo).")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs each worker reserves; also its torch threads on CPU.")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage (0 = plain data parallel).")
    bf16: bool = Field(False, description="bf16 mixed precision in DeepSpeed (fp32 master weights in the optimizer).")
    bf16_weights: bool = Field(
        False, description="Load the model's weights in bf16 (half the load memory; needs bf16: true)."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward: less memory, ~30% slower."
    )
    group_by_length: bool = Field(
        True, description="Put examples of similar length in the same micro-batch, so padding wastes little."
    )
    epochs: int = Field(1, ge=1, description="Passes over the training split.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    micro_batch_size: int = Field(1, ge=1, description="Examples per worker per forward pass.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    lr: float = Field(2e-5, gt=0, description="Peak learning rate (AdamW).")
    warmup_ratio: float = Field(
        0.1, ge=0, le=1, description="Share of the steps with a linear warmup; the rate then decays linearly."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_seq_len: int = Field(
        1024, ge=32, description="Tokens per example; longer prompts lose their start, a longer target is an error."
    )
    checkpoint_every: int = Field(0, ge=0, description="Checkpoint every N steps; 0 = each epoch end.")
    max_failures: int = Field(
        2,
        ge=-1,
        description="Worker-group failures one run recovers from (from the latest checkpoint); -1 = no limit.",
    )
    loss: LossConfig = Field(LossConfig(), description="The training loss (cross-entropy by default).")
    lora: LoraSettings | None = Field(None, description="Train LoRA adapters instead of all weights.")
    export: Literal["merged", "adapter"] = Field(
        "merged", description="With lora: a merged Hugging Face folder, or the adapter alone (loaded onto base_model)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.bf16_weights and not self.bf16:
            raise ValueError("train.bf16_weights needs train.bf16: true (DeepSpeed must run the model in bf16)")
        if self.export == "adapter" and self.lora is None:
            raise ValueError("train.export=adapter needs train.lora (a full fine-tune has no adapter to export)")
        return self
