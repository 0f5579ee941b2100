"""Mixed into ``Inventory``: the deliveries recorded but not yet done (``pending_deliveries``).

A certificate's row and its pending row are committed together; the pending row is
deleted once the files are renamed into place. What is left here after a crash is a
recorded certificate that was never handed out: ``pki.issue.pending`` delivers or
withdraws it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pki.model import serial_hex
from pki.storage.database import insert_params, reading
from pki.storage.schema import certificates, pending_deliveries


@dataclass(frozen=True)
class PendingRow:
    serial: int
    staged_at: dt.datetime
    files: str  # JSON: pki.issue.pending.PendingDelivery
    thing: str | None
    profile: str


class PendingDeliveries:
    engine: Engine

    def record_pending(
        self, conn: Connection, rows: Sequence[tuple[int, str]], now: dt.datetime
    ) -> None:
        """``rows``: (serial, files as JSON), inside the transaction that adds the
        certificates."""
        params = [{"serial": serial_hex(s), "staged_at": now, "files": f} for s, f in rows]
        sql, values = insert_params(conn, pending_deliveries, params)
        if values:
            conn.exec_driver_sql(sql, values)

    def clear_pending(self, conn: Connection, serials: Sequence[int]) -> None:
        hexes = [serial_hex(s) for s in serials]
        for start in range(0, len(hexes), 500):
            conn.execute(
                pending_deliveries.delete().where(
                    pending_deliveries.c.serial.in_(hexes[start : start + 500])
                )
            )

    def pending(self) -> list[PendingRow]:
        """Every delivery recorded and not done, oldest first."""
        p, c = pending_deliveries.c, certificates.c
        query = (
            sa.select(p.serial, p.staged_at, p.files, c.thing, c.profile)
            .join(certificates, c.serial == p.serial, isouter=True)
            .order_by(p.staged_at, p.serial)
        )
        with reading(self.engine) as conn:
            return [
                PendingRow(int(r.serial, 16), r.staged_at, r.files, r.thing, r.profile or "")
                for r in conn.execute(query)
            ]
