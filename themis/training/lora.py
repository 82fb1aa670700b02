"""LoRA through peft: wrap the student before DeepSpeed, export merged or adapter-only after.

Training works the same under ZeRO-2 and ZeRO-3: peft adds small trainable matrices beside the
frozen Linear weights (under ZeRO-3 the frozen weights are already partitioned by ``zero.Init``;
peft reads only their in/out features, and ``deepspeed.initialize`` partitions the adapters).

The export takes the full state dict that the training loop gathered on rank 0, loads it into a
fresh CPU copy of base model + adapter, and writes either the merged weights (a plain Hugging
Face folder, what every engine loads) or the adapter alone, whose ``adapter_config.json`` names
``train.base_model`` so ``themis.models`` can rebuild and merge it on the node that loads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from themis.config import LoraSettings, TrainConfig
from themis.models import resolve_model


def build_peft_config(settings: LoraSettings) -> Any:
    """peft's LoraConfig for a causal LM from ``train.lora``."""
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=settings.r,
        lora_alpha=settings.alpha,  # type: ignore[arg-type]  # peft annotates int; it computes alpha / r
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
    )


def apply_lora(model: Any, settings: LoraSettings) -> Any:
    """Wrap ``model`` with LoRA adapters; only the adapters stay trainable."""
    from peft import get_peft_model

    missing = set(settings.target_modules) - {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if missing:
        raise ValueError(
            f"train.lora.target_modules {sorted(missing)} name no module of {type(model).__name__}: "
            "use the names of its Linear layers (e.g. q_proj, v_proj)"
        )
    return get_peft_model(model, build_peft_config(settings))


def export_lora(state_dict: dict[str, Any], tcfg: TrainConfig, folder: Path) -> None:
    """Write the trained LoRA model to ``folder``: merged weights, or the adapter alone."""
    import torch
    from transformers import AutoModelForCausalLM

    assert tcfg.lora is not None, "export_lora needs train.lora"
    dtype = torch.bfloat16 if tcfg.bf16 else torch.float32
    base = AutoModelForCausalLM.from_pretrained(resolve_model(tcfg.base_model), dtype=dtype)
    model = apply_lora(base, tcfg.lora)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if unexpected or any("lora_" in key for key in missing):
        raise RuntimeError(
            f"the gathered LoRA weights do not fit the model: missing {missing}, unexpected {unexpected}"
        )
    if tcfg.export == "adapter":
        # The adapter names its base by the config's spec (builtin:... or a folder), not this node's path.
        model.peft_config["default"].base_model_name_or_path = tcfg.base_model
        model.save_pretrained(folder)
    else:
        model.merge_and_unload().save_pretrained(folder)
