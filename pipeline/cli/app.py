"""The ``pipeline`` command: options every command shares, one error style, and the commands.

Errors are one line on stderr, ``error: ...``: exit 2 for bad input (an
option, a selector, a rule), 1 for what could not be done (NATS or the
database unreachable, a page that cannot be read, an unknown id).  No
traceback reaches the user for either.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from pipeline import __version__, redact, settings
from pipeline.cli import check, config, dlq, inspect, logs, monitors, publish, run, schemas
from pipeline.cli.common import CommandError


class _OneLineErrors(TyperGroup):
    """Every error the command line meets becomes ``error: <one line>`` and its exit code."""

    def main(  # type: ignore[override]
        self, args: Any = None, prog_name: str | None = None, standalone_mode: bool = True, **extra: Any
    ) -> Any:
        try:
            result = super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
            code = result if isinstance(result, int) else 0
        except typer.Exit as e:
            code = e.exit_code
        except typer.Abort:
            code = _error("aborted", 1)
        except TyperException as e:  # click's usage errors (typer carries its own click): bad input
            if type(e).__name__ == "NoArgsIsHelpError":  # a bare `pipeline` or `pipeline monitor`: its help, whole
                typer.echo(e.format_message())
                code = 0
            else:
                code = _error(e.format_message(), getattr(e, "exit_code", 2))
        except CommandError as e:
            code = _error(str(e), e.code)
        except Exception as e:  # NATS refusing a request (replicas > 1 on a single server), or gone mid-command
            if not _is_nats_failure(e):
                raise
            code = _error(f"NATS: {getattr(e, 'description', None) or e}", 1)
        if standalone_mode:
            sys.exit(code)
        return code


def _is_nats_failure(error: Exception) -> bool:
    import nats.errors
    from dramatiq.errors import BrokerConnectionError

    return isinstance(error, nats.errors.Error | BrokerConnectionError)


def _error(message: str, code: int) -> int:
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    return code


app = typer.Typer(
    cls=_OneLineErrors,
    help="An AI monitoring pipeline on Dramatiq and NATS JetStream: watch pages and feeds, be told what changed.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pipeline {__version__}")
        raise typer.Exit()


#: Commands that run until stopped: they log what they do (scaling, outages, recoveries) at INFO by default.
LONG_RUNNING = {"up", "autoscale", "scheduler", "exporter"}


@app.callback()
def _options(
    ctx: typer.Context,
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="Say more (-vv: debug)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Warnings and errors only."),
    log_json: bool = typer.Option(False, "--log-json", help="Log JSON lines, for log shippers."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    chatty = ctx.invoked_subcommand in LONG_RUNNING
    logs.configure(verbose=verbose + chatty, quiet=quiet, as_json=log_json)
    try:  # once per command: every part it starts is given these (pipeline/settings.py)
        settings.configure(settings.Settings.load())
    except settings.SettingsError as e:
        raise CommandError(str(e), 2) from None


redact.install()
app.command()(run.up)
app.command()(run.autoscale)
app.command()(run.scheduler)
app.command()(run.exporter)
app.command()(check.check)
app.command()(publish.publish)
app.command()(inspect.status)
app.command()(inspect.lag)
app.command()(inspect.alerts)
app.command()(inspect.screenshot)
app.command()(schemas.schemas)
app.command("settings")(config.show_settings)
app.command()(schemas.manifests)
app.add_typer(monitors.app, name="monitor")
app.add_typer(dlq.app, name="dlq")


def main() -> None:
    """The console script."""
    app()
