"""What the rotation commands share: the application core, durations, the settings of
the service, and the options that set them."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

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
    from pki.errors import InvalidInput
    from rotation.service import RotationSettings

    try:
        return RotationSettings(
            grace=duration(grace),
            answer_timeout=duration(answer_timeout),
        )
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


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
