"""The JSON schema of a job config, kept in docs/config-schema.json for readers and editors.

``python -m themis.config.schema`` rewrites the file; ``--check`` only says whether it is current
(a test runs the same comparison, so the committed file cannot go stale).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from themis.config.pipeline import PipelineConfig

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "config-schema.json"


def render_schema() -> str:
    """The schema of :class:`PipelineConfig` (what a YAML job config may hold), as stable JSON text."""
    schema = PipelineConfig.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Themis job config"
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the schema to ``--out`` (default docs/config-schema.json), or with ``--check`` return 1
    if the file differs from what the code generates."""
    parser = argparse.ArgumentParser(prog="python -m themis.config.schema", description=main.__doc__)
    parser.add_argument("--out", type=Path, default=SCHEMA_PATH, help="where the schema goes")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if the file is stale")
    args = parser.parse_args(argv)
    text = render_schema()
    if args.check:
        current = args.out.read_text() if args.out.exists() else None
        if current != text:
            print(f"{args.out} is stale: run `python -m themis.config.schema` and commit it", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
