"""``pipeline schemas`` and ``pipeline manifests``: the files generated from the code (a test holds each)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def schemas(directory: Path = typer.Option(Path("docs/schemas"), help="Where to write them.")) -> None:
    """Write the JSON Schema of each event kind (the producer contract)."""
    from pipeline.events import json_schemas

    directory.mkdir(parents=True, exist_ok=True)
    for kind, schema in json_schemas().items():
        path = directory / f"{kind}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        typer.echo(f"wrote {path}")


def manifests(
    directory: Path = typer.Option(Path("autoscale/keda"), help="Where to write base/ and overlays/."),
) -> None:
    """Write the Kubernetes and KEDA manifests from the code's names and the scaling policy (pipeline/policy.py)."""
    from pipeline import manifests as rendered

    for path in rendered.write(directory):
        typer.echo(f"wrote {path}")
