"""Where the shipped benchmarks come from, and getting them onto this machine. Pure: no Ray or torch.

Each shipped dataset names its public repository, a pinned commit, and the SHA-256 of every file
(``SOURCES``). A file is read from an offline override folder when one is given (the config's
``data_dir``, else ``THEMIS_DATA_DIR``), laid out as ``<folder>/<dataset>/<file>``; otherwise pooch
downloads it once from raw.githubusercontent.com at the pinned commit into a cache
(``THEMIS_CACHE_DIR``, else the OS cache folder) and reuses it from then on (``THEMIS_DATA_URL``
names a mirror, laid out like the override folder, to download from instead). Either way the file
must match its pinned hash, so a report always names exactly the data it measured.

A recorded-verdicts file shipped with a dataset is named ``shipped:<dataset>/<file>`` in a config
(e.g. ``shipped:pandalm/gpt-3.5-turbo-testset-v1.json``); ``resolve`` turns that into a local path.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from themis.evaluation.records import BenchmarkError

DATA_DIR_ENV = "THEMIS_DATA_DIR"
CACHE_DIR_ENV = "THEMIS_CACHE_DIR"
MIRROR_ENV = "THEMIS_DATA_URL"  # a mirror laid out like the data folder, instead of GitHub
SHIPPED = "shipped:"


@dataclass(frozen=True)
class Source:
    """One public repository at a pinned commit and the files taken from it."""

    dataset: str  # the folder the files live in, here and in the cache
    repo: str  # owner/name on GitHub
    commit: str
    license: str
    files: Mapping[str, tuple[str, str]]  # file name -> (path in the repository, SHA-256)

    def url(self, file: str, base_url: str | None = None) -> str:
        """Where ``file`` is downloaded from: GitHub at the pinned commit, or a mirror laid out
        like the override folder (``<base_url>/<dataset>/<file>``)."""
        if base_url:
            return f"{base_url.rstrip('/')}/{self.dataset}/{file}"
        return f"https://raw.githubusercontent.com/{self.repo}/{self.commit}/{self.files[file][0]}"


SOURCES = {
    "pandalm": Source(
        "pandalm",
        "WeOpenML/PandaLM",
        "3871806e72b4832f815ecafd24d3503c73403f48",
        "Apache-2.0",
        {
            "testset-v1.json": (
                "data/testset-v1.json",
                "cc154f9067c7382d7ea86f8f246511a5e1ac87e1fddd845c5938d789505b07a4",
            ),
            "gpt-3.5-turbo-testset-v1.json": (
                "data/gpt-3.5-turbo-testset-v1.json",
                "4c00aa7b3eeae504050a037422ba6f5b0a2ee041680f47bb77b8a4b549b128e3",
            ),
            "pandalm-7b-testset-v1.json": (
                "data/pandalm-7b-testset-v1.json",
                "9a40b62a7bb2aa87ca77eb8bfcb51539b5a62f974ce91678d30e834d65ed0a7e",
            ),
        },
    ),
    "hhh_alignment": Source(
        "hhh_alignment",
        "prometheus-eval/prometheus-eval",
        "dcfb44272d5d0414832f5dbb8c2a05ebc2614234",
        "Apache-2.0",
        {
            "hhh_alignment_eval.json": (
                "eval/benchmark/data/hhh_alignment_eval.json",
                "fe6655dfeec99d04d582692767c736f2385b5e067f0b894d1b73a32af7be9c9e",
            ),
        },
    ),
    "mt_bench": Source(
        "mt_bench",
        "lm-sys/FastChat",
        "0e6d3e4beaab66f4d3f93db72541a4abab8af28d",
        "Apache-2.0",
        {
            "question.jsonl": (
                "fastchat/llm_judge/data/mt_bench/question.jsonl",
                "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7",
            ),
            "reference_answer_gpt-4.jsonl": (
                "fastchat/llm_judge/data/mt_bench/reference_answer/gpt-4.jsonl",
                "f957a5bc977badb66885ec970e6cd08527845780313f0995764260e5777b9b3f",
            ),
            "judge_prompts.jsonl": (
                "fastchat/llm_judge/data/judge_prompts.jsonl",
                "fd283293406d024f44c174b094ef48031d0687a4682fd3a56b29b138f80281b6",
            ),
        },
    ),
}


def fetch(
    dataset: str,
    file: str,
    data_dir: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    base_url: str | None = None,
    sources: Mapping[str, Source] = SOURCES,
) -> Path:
    """The local path of one shipped file, ``<root>/<dataset>/<file>``, checked against its pinned
    SHA-256: from the override folder (``data_dir``, else THEMIS_DATA_DIR) when there is one, else
    from the cache, downloading it first if it is not there yet."""
    source = _source(dataset, file, sources)
    expected = source.files[file][1]
    override = data_dir or os.environ.get(DATA_DIR_ENV)
    if override:
        path = Path(override) / dataset / file
        if not path.is_file():
            raise BenchmarkError(f"{path} not found in the data folder {override} (laid out as <dataset>/<file>)")
        _check_hash(path, expected, f"{path}")
        return path
    return _download(source, file, expected, cache_dir, base_url)


def data_root(dataset: str, file: str, data_dir: str | Path | None = None, **kwargs) -> Path:
    """The folder laid out like the data folder (``<root>/<dataset>/<file>``) once ``file`` is there:
    what the benchmark adapters read from."""
    return fetch(dataset, file, data_dir, **kwargs).parents[1]


def resolve(path: str, data_dir: str | Path | None = None) -> Path:
    """A config's path: ``shipped:<dataset>/<file>`` is fetched like a benchmark, ``shipped:<dataset>``
    gives the folder holding all of that dataset's files; anything else is a local path, as it is."""
    if not path.startswith(SHIPPED):
        return Path(path)
    dataset, _, file = path[len(SHIPPED) :].partition("/")
    if file:
        return fetch(dataset, file, data_dir)
    folders = {fetch(dataset, f, data_dir).parent for f in _source(dataset, None, SOURCES).files}
    return folders.pop()


def _source(dataset: str, file: str | None, sources: Mapping[str, Source]) -> Source:
    source = sources.get(dataset)
    if source is None:
        raise BenchmarkError(f"unknown shipped dataset {dataset!r}; known: {sorted(sources)}")
    if file is not None and file not in source.files:
        raise BenchmarkError(f"{dataset} ships no file {file!r}; it has {sorted(source.files)}")
    return source


def _download(source: Source, file: str, expected: str, cache_dir: str | Path | None, base_url: str | None) -> Path:
    # pooch keeps the file once it matches the hash, and downloads again only when it is missing or
    # differs: a second run reads the cache without touching the network.
    import pooch

    root = Path(cache_dir or os.environ.get(CACHE_DIR_ENV) or pooch.os_cache("themis"))
    url = source.url(file, base_url or os.environ.get(MIRROR_ENV))
    try:
        return Path(pooch.retrieve(url, f"sha256:{expected}", fname=file, path=root / source.dataset))
    except ValueError as exc:  # pooch's hash mismatch: it names the expected and the actual hash
        raise BenchmarkError(f"{source.dataset}/{file} from {url} is not the pinned file: {exc}") from None
    except OSError as exc:  # requests' connection errors are OSErrors too
        raise BenchmarkError(
            f"could not download {source.dataset}/{file} from {url} ({exc}); offline, set {DATA_DIR_ENV} "
            "or evaluate.benchmark.data_dir to a folder that holds it"
        ) from None


def _check_hash(path: Path, expected: str, name: str) -> None:
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != expected:
        raise BenchmarkError(
            f"{name} is not the pinned file: SHA-256 expected {expected} but got {actual} "
            "(a changed copy? use benchmark name=file for your own data)"
        )


def describe(dataset: str, file: str) -> str:
    """Where a shipped file comes from, as a report names it: repository, commit and path."""
    source = _source(dataset, file, SOURCES)
    return f"github.com/{source.repo}@{source.commit[:12]}:{source.files[file][0]}"
