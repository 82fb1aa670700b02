"""What every config section is built from: the strict base model, the error type, and the fields
and validators that more than one section uses (plain names, dtypes, sampling, actor pools)."""

from __future__ import annotations

from functools import partial
from typing import Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says what and where."""


class Strict(BaseModel):
    """Unknown keys are rejected (a typo never falls back to a default) and a loaded config is frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Dtype = Literal["auto", "float32", "bfloat16", "float16"]
DTYPE_HELP = (
    "Weights' dtype: float32, bfloat16 or float16; 'auto' = bfloat16 on a GPU, float32 on CPU "
    "(vLLM on a GPU: vLLM's own choice)."
)
DEVICE_HELP = "'auto', 'cpu', 'cuda' or 'cuda:N'."
NUM_THREADS_HELP = "torch threads on CPU; None = torch's choice."


def plain_name(value: str, what: str) -> str:
    """A name that becomes one folder under the run root (a run, a judge's report, a benchmark):
    so nothing a config names can write outside it."""
    if not value or value.startswith(".") or any(bad in value for bad in ("/", "\\", "..")):
        raise ValueError(f"{what} must be a plain folder name (no '/', '\\' or '..', not starting with '.'): {value!r}")
    return value


def plain_name_check(what: str) -> AfterValidator:
    """A field validator (for ``Annotated[str, plain_name_check("run.name")]``) that applies
    :func:`plain_name`, naming the field as ``what`` in its error."""
    return AfterValidator(partial(plain_name, what=what))


class Sampling(Strict):
    """How one generation samples its tokens."""

    max_tokens: int = Field(128, ge=1, description="Most new tokens per generation.")
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling: the smallest token set of this mass.")


class ActorPool(Strict):
    """How Ray Data runs an engine: an autoscaling pool of actors, each holding one engine."""

    min_actors: int = Field(1, ge=1, description="Actors the pool starts with (Ray Data's concurrency min).")
    max_actors: int = Field(1, ge=1, description="Actors the pool may grow to when rows queue up.")
    gpus_per_actor: float | None = Field(
        None, ge=0, description="GPUs each actor reserves; None = what the engine needs (its device / TP size)."
    )
    cpus_per_actor: float | None = Field(None, gt=0, description="CPUs each actor reserves; None = the engine's need.")
    batch_size: int | None = Field(
        None,
        ge=1,
        description="Rows handed to an actor at once (a resumed stage re-pays at most this many per actor); "
        "None = 4 x the engine's batch_size (local models) or 4 x its concurrency (HTTP).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> ActorPool:
        if self.max_actors < self.min_actors:
            raise ValueError("pool.max_actors must be >= pool.min_actors")
        return self
