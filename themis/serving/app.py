"""The judge as a Ray Serve application builder: what a KubeRay RayService's serveConfigV2 imports.

    applications:
      - name: themis-judge
        import_path: themis.serving.app:build_judge_app
        args: {config: jobs/configs/cluster.yaml, storage_root: s3://bucket/runs}

or on any running Ray cluster:
``serve run themis.serving.app:build_judge_app config=jobs/configs/cluster.yaml``. The builder lives
in ``themis.serving.deployment`` with the deployment; this module keeps the import path manifests name stable.
"""

from themis.serving.deployment import JudgeAppArgs, build_judge_app, load_judge_config, resolve_config_path

__all__ = ["JudgeAppArgs", "build_judge_app", "load_judge_config", "resolve_config_path"]
