"""Alembic's environment for fleetpki: migrations run on the connection (and inside the
transaction) that ``pki.storage.migrate`` hands over; no alembic.ini, no URL here."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None)
context.run_migrations()
