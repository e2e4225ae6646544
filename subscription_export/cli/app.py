"""The `subscription-export` typer app: global options, the shared consoles, and how errors
reach the user (one line and an exit code; tracebacks only with --debug)."""

from __future__ import annotations

import sys
import traceback
import warnings
from dataclasses import dataclass
from typing import Annotated

import typer
from rich.console import Console

from subscription_export.cli.index import LazyCommands
from subscription_export.core.errors import SubscriptionExportError
from subscription_export.core.secrets import mask_in_text
from subscription_export.core.settings import Settings

app = typer.Typer(
    cls=LazyCommands,
    help="Change data capture and incremental export of a subscription database, on Dagster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
# The largest LSN or id a database column holds (BIGINT): a larger option is a usage error,
# not an OverflowError from the driver.
DB_INT_MAX = 2**63 - 1
err_console = Console(stderr=True, soft_wrap=True)


@dataclass
class Context:
    settings: Settings
    debug: bool


def settings_of(ctx: typer.Context) -> Settings:
    """The settings the global options and the environment give."""
    return ctx.ensure_object(Context).settings


@app.callback()
def main_options(
    ctx: typer.Context,
    source_url: Annotated[
        str | None, typer.Option(help="Source DB [env SUBSCRIPTION_EXPORT_SOURCE_URL].")
    ] = None,
    state_url: Annotated[
        str | None, typer.Option(help="State DB [env SUBSCRIPTION_EXPORT_STATE_URL].")
    ] = None,
    export_dir: Annotated[
        str | None,
        typer.Option(
            help="Export folder or s3://, gs://, az:// URL [env SUBSCRIPTION_EXPORT_EXPORT_DIR]."
        ),
    ] = None,
    watermark_url: Annotated[
        str | None,
        typer.Option(
            help="redis://… for watermarks in Redis [env SUBSCRIPTION_EXPORT_WATERMARK_URL]."
        ),
    ] = None,
    window_max_changes: Annotated[
        int | None, typer.Option(min=1, max=DB_INT_MAX, help="Changes per window at most.")
    ] = None,
    window_max_age: Annotated[
        float | None, typer.Option(min=0, help="Seconds before a partial window closes.")
    ] = None,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    settings = (
        Settings.from_env()
        .with_overrides(
            source_url=source_url,
            state_url=state_url,
            export_dir=export_dir,
            watermark_url=watermark_url,
            window_max_changes=window_max_changes,
            window_max_age_s=window_max_age,
        )
        .resolved()
    )
    if settings.log_format == "json":
        from subscription_export.core.logs import use_json_logs  # lazy: most runs never need it

        use_json_logs()
    ctx.obj = Context(settings, debug)


def main() -> None:
    """Entry point: user errors as one line and exit code 2, tracebacks only with --debug."""
    debug = "--debug" in sys.argv
    # Dagster flags beta/preview APIs we use on purpose (partitioned checks, backfill policy).
    warnings.filterwarnings("ignore", message=r".*(beta|preview)", category=Warning)
    try:
        # Without standalone mode click returns a command's exit code instead of exiting.
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except SubscriptionExportError as exc:
        # lazy, like every module under cli/: `--help` loads none of them
        from subscription_export.cli.shown import marked

        if debug:
            traceback.print_exc()
        err_console.print(
            marked("[red]error:[/red] {exc}", exc=mask_in_text(str(exc))), highlight=False
        )
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:
        # typer vendors click: usage errors (unknown option, BadParameter, no command given) are
        # typer's ClickException, never click.ClickException.
        _show_usage_error(exc)
        sys.exit(exc.exit_code)
    except Exception as exc:
        # lazy: only an error reaches here; --help and the usage errors never load SQLAlchemy
        from sqlalchemy.exc import SQLAlchemyError

        from subscription_export.cli.shown import marked

        if isinstance(exc, SQLAlchemyError):
            if debug:
                traceback.print_exc()
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            err_console.print(
                marked("[red]database error:[/red] {r}", r=mask_in_text(reason)), highlight=False
            )
            sys.exit(2)
        if debug:
            raise
        err_console.print(
            marked(
                "[red]unexpected error:[/red] {name}: {exc} (rerun with --debug)",
                name=type(exc).__name__,
                exc=mask_in_text(str(exc)),
            ),
            highlight=False,
        )
        sys.exit(1)


def _show_usage_error(exc: typer.TyperException) -> None:
    """A bad option or argument as one line naming it, with where to read the usage; help
    asked for by giving no command is shown as click shows it."""
    from subscription_export.cli.shown import marked

    ctx = getattr(exc, "ctx", None)
    if ctx is None or type(exc).__name__ == "NoArgsIsHelpError":
        exc.show()  # type: ignore[attr-defined]  # its one subclass, ClickException, has show()
        return
    err_console.print(
        marked(
            "Error: {message} (see '{command} --help')",
            message=exc.format_message(),  # type: ignore[attr-defined]
            command=ctx.command_path,
        ),
        highlight=False,
    )
