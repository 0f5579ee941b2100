"""What the rotation commands share: the application core, durations, the settings of
the service, and the options that set them."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from pki.app import App
    from rotation.service import RotationSettings


def current_app() -> App:
    from pki.cli.root import current_app

    return current_app()


def duration(text: str) -> dt.timedelta:
    from pki.model import parse_duration

    return parse_duration(text)


def settings(grace: str, answer_timeout: str) -> RotationSettings:
    """The service's settings from the command's options (the retry options, when the
    command has them, are read from the click context)."""
    from pki.errors import InvalidInput
    from rotation.service import RotationSettings

    context = click.get_current_context(silent=True)
    retries = dict(context.meta.get(_RETRIES, {})) if context is not None else {}
    try:
        chosen = RotationSettings(grace=duration(grace), answer_timeout=duration(answer_timeout))
        changes: dict[str, Any] = {name: duration(text) for name, text in retries.items()}
        return dataclasses.replace(chosen, **changes)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


_RETRIES = "fleetpki.rotation.retries"


def _keep(name: str) -> Any:
    def store(context: click.Context, _param: click.Parameter, value: str) -> str:
        context.meta.setdefault(_RETRIES, {})[name] = value
        return value

    return store


def retry_options(command: Any) -> Any:
    """--resend-after, --resend-max, --retry-after: how a device that does not answer is
    asked again, and when a failed rotation is tried anew."""
    for flag, name, default, text in reversed((
        ("--resend-after", "resend_after", "1m",
         "Ask a device that has not answered again after DURATION, then twice as long each "
         "time (the same rotation; the request is also retained at the broker)."),
        ("--resend-max", "resend_max", "10m", "The longest pause between two requests."),
        ("--retry-after", "retry_after", "1h",
         "After a failed rotation, wait DURATION before the thing is asked anew."),
    )):  # fmt: skip
        command = click.option(
            flag, default=default, show_default=True, metavar="DURATION", help=text,
            expose_value=False, callback=_keep(name),
        )(command)  # fmt: skip
    return command


grace_option = click.option(
    "--grace",
    default="1h",
    show_default=True,
    metavar="DURATION",
    help="How long the old certificate stays valid after the device confirms (0: revoke "
    "it at once).",
)
answer_option = click.option(
    "--answer-timeout",
    default="15m",
    show_default=True,
    metavar="DURATION",
    help="How long a device has to send its CSR, then to confirm.",
)
