"""``pipeline settings``: what this machine's settings are, and the README's table of them."""

from __future__ import annotations

import typer

from pipeline.cli.common import JSON_OPTION, echo_json, settings, table


def show_settings(
    as_json: bool = JSON_OPTION,
    markdown: bool = typer.Option(False, "--markdown", help="Print the README's table of every variable instead."),
) -> None:
    """Every PIPELINE_* setting as this machine has it (secrets hidden; * marks what the environment set)."""
    from pipeline.settings import effective, markdown_table

    if markdown:
        typer.echo(markdown_table())
        return
    rows = effective(settings())
    if as_json:
        echo_json({name: {"value": value, "set": was_set} for name, value, was_set in rows})
        return
    table(["VARIABLE", "VALUE"], ([f"{name}{' *' if was_set else ''}", value or "-"] for name, value, was_set in rows))
    typer.echo("\n* set in the environment; the others are the defaults")
