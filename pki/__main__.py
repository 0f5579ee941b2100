"""``python -m pki``: the fleetpki CLI (what the ``fleetpki`` console script runs)."""

from pki.cli import run

run()
