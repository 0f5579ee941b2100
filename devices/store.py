"""The device side's own tables on the inventory's database (SQLite or PostgreSQL):
which certificates fleetpki registered with IoT Core, with what id and status, and the
CA registration. They are on the inventory's shared ``MetaData``; their schema is made and
changed by this package's migrations (``devices/migrations``). ``pki`` knows nothing of
them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pki.clock import Clock
from pki.storage import UtcDateTime, metadata
from pki.storage.database import reading, writing

iot_certificates = sa.Table(
    "iot_certificates",
    metadata,
    sa.Column("serial", sa.String(42), primary_key=True),
    sa.Column("thing", sa.String(128), nullable=False, index=True),
    sa.Column("certificate_id", sa.String(128), nullable=False),
    sa.Column("certificate_arn", sa.String(2048), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("registered_at", UtcDateTime, nullable=False),
)

iot_ca = sa.Table(
    "iot_ca",
    metadata,
    sa.Column("certificate_id", sa.String(128), primary_key=True),
    sa.Column("certificate_arn", sa.String(2048), nullable=False),
    sa.Column("registered_at", UtcDateTime, nullable=False),
)


@dataclass(frozen=True)
class IotCertificate:
    serial_hex: str
    thing: str
    certificate_id: str
    certificate_arn: str
    status: str


def _now(clock: Clock) -> dt.datetime:
    return clock.now()


def record_ca(engine: Engine, certificate_id: str, arn: str, clock: Clock) -> None:
    with writing(engine, "device tables") as conn:
        conn.execute(iot_ca.delete())
        conn.execute(
            iot_ca.insert().values(
                certificate_id=certificate_id, certificate_arn=arn, registered_at=_now(clock)
            )
        )


def ca_registration(engine: Engine) -> str | None:
    with reading(engine, "device tables") as conn:
        value = conn.execute(sa.select(iot_ca.c.certificate_id)).scalar()
    return None if value is None else str(value)


def record_certificate(
    engine: Engine, serial: str, thing: str, certificate_id: str, arn: str, clock: Clock
) -> None:
    with writing(engine, "device tables") as conn:
        conn.execute(
            iot_certificates.insert().values(
                serial=serial,
                thing=thing,
                certificate_id=certificate_id,
                certificate_arn=arn,
                status="ACTIVE",
                registered_at=_now(clock),
            )
        )


def _row(row: Sequence[Any]) -> IotCertificate:
    return IotCertificate(str(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4]))


_COLUMNS = (
    iot_certificates.c.serial,
    iot_certificates.c.thing,
    iot_certificates.c.certificate_id,
    iot_certificates.c.certificate_arn,
    iot_certificates.c.status,
)


def certificate(engine: Engine, serial: str) -> IotCertificate | None:
    with reading(engine, "device tables") as conn:
        row = conn.execute(sa.select(*_COLUMNS).where(iot_certificates.c.serial == serial)).first()
    return None if row is None else _row(row)


def certificates_of(engine: Engine, thing: str) -> list[IotCertificate]:
    with reading(engine, "device tables") as conn:
        rows = conn.execute(
            sa.select(*_COLUMNS)
            .where(iot_certificates.c.thing == thing)
            .order_by(iot_certificates.c.registered_at)
        ).all()
    return [_row(r) for r in rows]


def set_status(engine: Engine, serial: str, status: str) -> None:
    with writing(engine, "device tables") as conn:
        conn.execute(
            iot_certificates.update()
            .where(iot_certificates.c.serial == serial)
            .values(status=status)
        )


def forget_certificate(engine: Engine, serial: str) -> None:
    with writing(engine, "device tables") as conn:
        conn.execute(iot_certificates.delete().where(iot_certificates.c.serial == serial))


def certificate_ids(engine: Engine, serials: set[str]) -> dict[str, tuple[str, str]]:
    """The IoT Core certificate id and thing of each of ``serials`` registered there."""
    found: dict[str, tuple[str, str]] = {}
    wanted = sorted(serials)
    columns = (iot_certificates.c.serial, iot_certificates.c.certificate_id,
               iot_certificates.c.thing)  # fmt: skip
    with reading(engine, "device tables") as conn:
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = conn.execute(
                sa.select(*columns).where(iot_certificates.c.serial.in_(chunk))
            ).all()
            found.update({str(s): (str(cert_id), str(thing)) for s, cert_id, thing in rows})
    return found


# -- the queue IoT Core's lifecycle events are routed to (a fleetpki_meta row) ----------

LIFECYCLE_QUEUE = "iot_lifecycle_queue"


def lifecycle_queue(engine: Engine) -> str | None:
    """The SQS queue URL ``iot lifecycle-rule`` routed the ``connected`` events to."""
    from pki.storage.schema import meta

    with reading(engine, "device tables") as conn:
        value = conn.execute(sa.select(meta.c.value).where(meta.c.key == LIFECYCLE_QUEUE)).scalar()
    return None if value is None else str(value)


def set_lifecycle_queue(engine: Engine, queue_url: str | None) -> None:
    from pki.storage.schema import meta

    with writing(engine, "device tables") as conn:
        conn.execute(meta.delete().where(meta.c.key == LIFECYCLE_QUEUE))
        if queue_url is not None:
            conn.execute(meta.insert().values(key=LIFECYCLE_QUEUE, value=queue_url))
