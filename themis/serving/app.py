"""The judge as a Ray Serve application: the builders a KubeRay RayService's serveConfigV2 imports,
``themis serve`` deploys, and tests call.

    applications:
      - name: themis-judge
        import_path: themis.serving.app:build_judge_app
        args: {config: jobs/configs/cluster.yaml, storage_root: s3://bucket/runs}

or on any running Ray cluster:
``serve run themis.serving.app:build_judge_app config=jobs/configs/cluster.yaml``. The deployment
itself (``JudgeServer``, its routes) lives in ``themis.serving.deployment``.
"""

# No `from __future__ import annotations` here: Serve reads the builder's parameter annotation.

import logging
from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from themis.config import PipelineConfig, ServeConfig, StorageConfig, load_config
from themis.models import EXPORT_MARKERS, ModelSource, resolve_model
from themis.serving.deployment import JudgeServer
from themis.serving.guard import load_key_hashes, proxy_env
from themis.serving.options import deployment_options
from themis.serving.promotion import check_promotion
from themis.serving.replica import EngineFactory, build_serve_engine, connected_cluster_gpus

APP_NAME = "themis-judge"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
logger = logging.getLogger("ray.serve")


def build_app(
    serve_cfg: ServeConfig,
    model: ModelSource | str,
    key_hashes: frozenset = frozenset(),
    engine_factory: EngineFactory = build_serve_engine,
) -> Application:
    """The Serve application for a model (a source, or a folder): one autoscaled deployment."""
    source = model if isinstance(model, ModelSource) else ModelSource(spec=str(model))
    # serve.deployment made the class a Deployment; Ray's annotations do not say so.
    deployment = cast(Any, JudgeServer).options(**deployment_options(serve_cfg, connected_cluster_gpus()))
    return deployment.bind(source, serve_cfg, frozenset(key_hashes), engine_factory)


def serve_start_options(host: str, port: int, key_hashes: frozenset = frozenset()) -> dict[str, Any]:
    """``serve.start``'s keyword arguments for the judge: HTTP on ``host:port``, no gRPC proxy, and
    ``ProxyGuard`` in front of Serve's proxy (its ``/-/routes`` needs a key where keys are set, its
    own errors are OpenAI-shaped). Ray 2.60 takes proxy middleware only from an import path in the
    proxy's environment, which the controller passes on to the proxies it starts."""
    return {
        "http_options": {"host": host, "port": port},
        "grpc_options": {"grpc_servicer_functions": []},
        "controller_options": {"runtime_env": {"env_vars": proxy_env(key_hashes)}},
    }


def served_model_source(serve_cfg: ServeConfig, storage: StorageConfig, run_name: str) -> ModelSource:
    """What to serve: the run's export ('trained') or the configured model, checked but not
    downloaded here (each replica fetches its own copy on its own node). Creates no folders."""
    if serve_cfg.model != "trained":
        if not serve_cfg.model.startswith("builtin:"):
            resolve_model(serve_cfg.model)  # a missing folder fails here, clearly
        return ModelSource(spec=serve_cfg.model)
    import pyarrow.fs as pafs

    from themis.storage import build_filesystem

    fs, base = build_filesystem(storage)
    markers = [f"{base}/{run_name}/model/{marker}" for marker in EXPORT_MARKERS]  # merged or adapter-only
    if all(info.type == pafs.FileType.NotFound for info in fs.get_file_info(markers)):
        where = f"{storage.root.rstrip('/')}/{run_name}/model"
        raise FileNotFoundError(
            f"no trained model to serve at {where}: run the train stage first, "
            "or set serve.model to a Hugging Face model folder"
        )
    return ModelSource(storage=storage, run_name=run_name)


class JudgeAppArgs(BaseModel):
    """``args`` of the Serve application (serveConfigV2 ``applications[].args``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: str = Field(description="A Themis job config, e.g. jobs/configs/cluster.yaml.")
    storage_root: str | None = Field(None, description="Overrides run.storage.root (the overlay's bucket).")
    overrides: list[str] = Field(default_factory=list, description="key=value config overrides.")
    force: bool = Field(False, description="Serve even if the promotion gate refuses (logged).")


def build_judge_app(args: JudgeAppArgs) -> Application:
    """The judge application for a job config (what a RayService imports): the promotion gate,
    the model's location (nothing fetched here), the API keys' hashes, then the deployment."""
    args = JudgeAppArgs.model_validate(args)  # `serve run` and direct callers pass a dict
    cfg = load_judge_config(args)
    source = served_model_source(cfg.serve, cfg.run.storage, cfg.run.name)
    decision = check_promotion(cfg.serve.promotion, cfg.run.storage, cfg.run.name)
    if decision["forced"]:
        logger.warning("promotion gate forced: %s (report: %s)", "; ".join(decision["failed"]), decision["report"])
    return build_app(cfg.serve, source, load_key_hashes(cfg.serve.auth, cfg.serve.host))


def load_judge_config(args: JudgeAppArgs) -> PipelineConfig:
    """The job config the args name, with the storage root, overrides and force applied."""
    overrides = list(args.overrides)
    if args.storage_root:
        overrides.insert(0, f"run.storage.root={args.storage_root}")
    if args.force:
        overrides.append("serve.promotion.force=true")
    return load_config(resolve_config_path(args.config), overrides)


def resolve_config_path(path: str) -> Path:
    """``path`` itself if it exists, else the same relative path under the project root (Ray may
    start the builder in any working directory)."""
    given = Path(path).expanduser()
    if given.is_file() or given.is_absolute():
        return given
    return PROJECT_ROOT / given if (PROJECT_ROOT / given).is_file() else given
