"""The generation stages' sections: instructions, responses and the teacher's judgments."""

from __future__ import annotations

from pydantic import Field

from themis.config.base import Sampling, Strict


class RolePlayConfig(Strict):
    """Role-play scenarios: the teacher quizzes a persona to get instructions."""

    per_scenario: int = Field(2, ge=0, description="Quiz instructions per role-play scenario.")


class ReferenceBasedConfig(Strict):
    """Reference-based scenarios: the teacher writes questions about shipped or given passages."""

    passages_dir: str | None = Field(None, description="Folder of .txt passages; None = the shipped set.")
    per_scenario: int = Field(2, ge=0, description="Instructions per reference-based scenario.")


class InstructionsConfig(Strict):
    """The instructions stage: instructions written by the teacher, given by the user, or from MT-bench."""

    engine: str = Field("teacher", description="Engine (name in `engines`) that writes instructions.")
    classifier_engine: str = Field("teacher", description="Engine that labels unlabelled instructions.")
    sampling: Sampling = Field(
        Sampling(max_tokens=64, temperature=0.7), description="Sampling of the instruction-writing calls."
    )
    scenarios: list[str] | None = Field(None, description="Scenario ids to generate for; None = all.")
    reference_based: ReferenceBasedConfig = Field(
        ReferenceBasedConfig(), description="Instructions drawn from passages (reference-based scenarios)."
    )
    role_play: RolePlayConfig = Field(RolePlayConfig(), description="Instructions from quizzes (role-play scenarios).")
    user_file: str | None = Field(
        None, description="A JSONL of the user's own instructions (instruction, optional scenario, reference)."
    )
    min_chars: int = Field(12, ge=1, description="Shorter generated instructions are rejected.")
    mt_bench_dir: str | None = Field(
        None,
        description="Also take MT-bench's first-turn questions (GPT-4 references where given) from this "
        "folder: shipped:mt_bench (FastChat's pinned files, fetched once) or a local copy; their "
        "categories map to scenarios.",
    )
    mt_bench_limit: int | None = Field(None, ge=1, description="Use only the first N MT-bench questions.")


class AnswerModel(Strict):
    """One model that answers instructions in the responses stage."""

    name: str = Field(description="Label stored with each response.")
    engine: str = Field(description="Engine name in `engines`.")
    sampling: Sampling = Field(Sampling(max_tokens=128, temperature=0.8), description="Sampling of its answers.")


class ResponsesConfig(Strict):
    """The responses stage: K answers per instruction from a pool of answer models."""

    pool: list[AnswerModel] = Field(min_length=1, description="Answer models; responses cycle through them.")
    per_instruction: int = Field(2, ge=1, description="K responses per instruction.")


class SelfConsistencyConfig(Strict):
    """The teacher judges every item k times with sampling; an item is kept only if the k agree."""

    samples: int = Field(1, ge=1, description="Judgments per item (k); 1 = off.")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature of the k judgments (replaces sampling's).")
    score_tolerance: int = Field(
        0, ge=0, description="Scores agree when the highest and lowest of the k differ by at most this."
    )


class JudgmentsConfig(Strict):
    """The judgments stage: the teacher grades responses alone, with references, and in pairs."""

    engine: str = Field("teacher", description="The teacher engine.")
    sampling: Sampling = Field(Sampling(max_tokens=96), description="Sampling of the judgment calls.")
    single: bool = Field(True, description="Grade every response on its own (1-5).")
    reference_guided: bool = Field(True, description="Grade with a reference in reference-guided scenarios.")
    pairwise: bool = Field(True, description="Compare pairs of responses in both orders.")
    pairs_per_instruction: int = Field(1, ge=0, description="Most response pairs judged per instruction.")
    reference_sampling: Sampling = Field(
        Sampling(max_tokens=96),
        description="Sampling of the calls where the teacher writes a reference answer (reference-guided "
        "items without one).",
    )
    constrain_format: bool = Field(
        True, description="Force the verdict opening and constrain the score token (local engines)."
    )
    self_consistency: SelfConsistencyConfig = Field(
        SelfConsistencyConfig(), description="Sample k judgments per item and keep the items whose k agree."
    )
