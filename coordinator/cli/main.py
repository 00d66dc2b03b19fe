"""``coordinator``: the operators' command line. It parses, calls the library, renders.

No business logic lives here: the commands call the managers, :mod:`coordinator.overview`,
:mod:`coordinator.config_file` and :mod:`coordinator.doctor`. Errors from the library print
one line (no traceback, no secret) and exit with 1; bad usage exits with 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from .. import __version__
from ..errors import CoordinatorError
from ..store.secrets import redact
from . import admin
from .context import Settings, pass_settings
from .credentials import credentials
from .events import events
from .profiles import breaker, clear_cooldown_now, cooldown, profiles, sessions
from .status import status, workers

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="coordinator", message="%(prog)s %(version)s")
@click.option(
    "--url",
    envvar="COORDINATOR_REDIS_URL",
    help="store URL (default: $COORDINATOR_REDIS_URL, else memory://)",
)
@click.option("--namespace", default="coord", show_default=True, help="key namespace")
@click.pass_context
def cli(ctx: click.Context, url: str | None, namespace: str) -> None:
    """Inspect and operate the credential pools, model profiles and OAuth credentials that a
    fleet of replicas shares through Redis."""
    ctx.obj = Settings(url=url, namespace=namespace)


@cli.command("clear-cooldown", hidden=True)
@click.argument("profile_id")
@pass_settings
def clear_cooldown(settings: Settings, profile_id: str) -> None:
    """End a profile's cooldowns now (the older name of ``cooldown clear``)."""
    clear_cooldown_now(settings, profile_id)


for command in (
    status,
    workers,
    profiles,
    cooldown,
    breaker,
    sessions,
    credentials,
    events,
    admin.apply,
    admin.doctor,
    admin.export,
    admin.import_,
    admin.functions,
    admin.keygen,
    admin.worker,
):
    cli.add_command(command)


def _fail(message: str, code: int) -> int:
    click.echo(f"coordinator: error: {message}", err=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``coordinator`` command; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = cli.main(args=args, prog_name="coordinator", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
        return 2
    except click.UsageError as exc:
        hint = (
            f" (see: coordinator {exc.ctx.command_path.partition(' ')[2]} --help)"
            if exc.ctx
            else ""
        )
        return _fail(f"{exc.format_message()}{hint}".replace("  ", " "), 2)
    except click.ClickException as exc:
        return _fail(exc.format_message(), exc.exit_code)
    except (click.Abort, KeyboardInterrupt):  # Ctrl-C: how --watch and --follow end
        return 130
    except CoordinatorError as exc:
        return _fail(str(exc), 1)
    except OSError as exc:  # a file that cannot be read or written, a closed pipe
        return _fail(f"{exc.strerror or exc}", 1)
    except Exception as exc:  # a bug: still one line, and never a secret it may carry
        return _fail(f"internal error: {type(exc).__name__}: {redact(str(exc))}", 1)
    except SystemExit as exc:  # worker, doctor
        return exc.code if isinstance(exc.code, int) else 1
    return result if isinstance(result, int) else 0
