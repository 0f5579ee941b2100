"""The ``fleetpki`` command line.

``main(argv) -> int`` is the whole contract: exit 0 on success, 2 for operator errors
(bad input, policy violation, not found), 1 for internal or backend failures, 130 when
interrupted, with a one-line message on stderr. Each command group lives in a module of
this package and only parses, calls the application core (``pki.app`` and the workflow
modules) and prints. Other packages add command groups through the ``fleetpki.commands``
entry-point group, so this package never imports them. Heavy imports happen inside the
commands to keep start-up fast.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pki.app import App
from pki.cli import backup, ca, db, doctor, issue, records, revoke  # noqa: F401 (commands)
from pki.cli.options import err
from pki.cli.root import cli
from pki.cli.trust import bundle as _bundle_group
from pki.cli.trust import crl_publish as _crl_publish

if TYPE_CHECKING:
    from pki.clock import Clock

cli.add_command(_bundle_group)
revoke.crl_cmd.add_command(_crl_publish)

__all__ = ["cli", "main", "run"]


def main(argv: Sequence[str] | None = None, *, clock: Clock | None = None) -> int:
    """Run the CLI; return the exit code instead of exiting."""
    from pki import logs
    from pki.clock import SystemClock
    from pki.errors import FleetPkiError, InternalError
    from pki.text import escape_controls, one_line

    logs.for_commands()
    app = App(home_path=Path(".fleetpki"), clock=clock or SystemClock())
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        # click's own main() would print an empty line on Ctrl-C before its Abort: the
        # context is made and invoked here, so an interrupt reaches the handler below as is
        with cli.make_context("fleetpki", args, obj=app) as ctx:
            result = cli.invoke(ctx)
        return result if isinstance(result, int) else 0
    except FleetPkiError as exc:
        # one line, whatever a cause carried; text that came from outside is escaped
        text = escape_controls(str(exc).strip())
        # an InternalError carried out of a worker reads "internal error ...": the same
        # "fleetpki: internal error" prefix as one raised here
        err(f"fleetpki: {text}" if isinstance(exc, InternalError) else f"fleetpki: error: {text}")
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.NoArgsIsHelpError as exc:
        ctx = exc.ctx
        path = ctx.command_path if ctx else "fleetpki"
        group = ctx.command if ctx else None
        names = group.list_commands(ctx) if isinstance(group, click.Group) and ctx else []
        err(f"fleetpki: error: {path} needs a command: {', '.join(names)} (see '{path} --help')")
        return 2
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        err(f"fleetpki: error: {one_line(exc.format_message())}{hint}")
        return 2
    except click.ClickException as exc:
        err(f"fleetpki: error: {one_line(exc.format_message())}")
        return exc.exit_code
    except BrokenPipeError:
        # the reader went away (fleetpki ca chain | head): nothing more to say, to anyone
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (click.Abort, KeyboardInterrupt):
        # click turns Ctrl-C into Abort (it also means end of input at a prompt, which no
        # fleetpki command shows): either way the operator stopped the command
        err("fleetpki: interrupted")
        return 130
    except Exception as exc:  # a bug or an unexpected library failure: one line, exit 1
        first = (str(exc).strip().splitlines() or [""])[0]
        err(f"fleetpki: internal error: {type(exc).__name__}: {escape_controls(first)}")
        return 1
    finally:
        app.close()


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
