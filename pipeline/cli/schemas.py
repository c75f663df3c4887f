"""``pipeline schemas``: the producer contract, as JSON Schema files."""

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
