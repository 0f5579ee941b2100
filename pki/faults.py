"""Named crash points: where the reliability suite kills fleetpki (``kill -9`` of itself)
to prove that a crash anywhere leaves a state the next run completes.

Every point is declared here, once, with what a crash there leaves behind; the product
calls :func:`reach` at it. ``FLEETPKI_FAULT=NAME`` makes the process kill itself with
SIGKILL the first time it reaches ``NAME``; ``NAME@N`` the N-th time (a batch's third
chunk, say). Unset, :func:`reach` is a dictionary look-up and nothing else. It can do
nothing that the person who sets a process's environment could not do anyway (kill it).
"""

from __future__ import annotations

import os
import signal
from collections import Counter

FAULT_ENV = "FLEETPKI_FAULT"

POINTS: dict[str, str] = {}


def _point(name: str, leaves: str) -> str:
    POINTS[name] = leaves
    return name


# issuance (single, batch, forked batch workers)
ISSUE_STAGED = _point(
    "issue.staged", "files under temporary names, no row: the next run removes them"
)
ISSUE_COMMITTED = _point(
    "issue.committed",
    "rows committed with their delivery pending, files not placed: the next run delivers",
)
ISSUE_PLACED_ONE = _point(
    "issue.placed-one",
    "some files of a delivery placed, the rest under temporary names: the next run "
    "places the rest",
)
ISSUE_PLACED = _point(
    "issue.placed", "files placed, the pending mark not cleared: the next run clears it"
)
# revocation
REVOKE_COMMITTED = _point(
    "revoke.committed", "the certificate revoked in the inventory, its CRL not re-signed"
)
# CRLs
CRL_NUMBERED = _point(
    "crl.numbered", "a CRL number recorded, the CRL file not written: the next CRL is higher"
)

# server rotation (rotation/server_flow.py)
ROTATION_RECORDED = _point(
    "rotation.server-recorded",
    "the new server certificate recorded on its rotation, not installed: once the answer "
    "timeout is over, the next run withdraws it and the server keeps the old one",
)
ROTATION_INSTALLED = _point(
    "rotation.server-installed",
    "the new server certificate swapped in on disk, the server not reloaded: the next run "
    "owes the reload and goes on from what is on disk",
)

_reached: Counter[str] = Counter()


def reach(name: str) -> None:
    """Kill this process here when the fault ``name`` is set (see the module's text)."""
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    assert name in POINTS, name
    target, _, nth = wanted.partition("@")
    if target != name:
        return
    _reached[name] += 1
    if _reached[name] >= (int(nth) if nth.isdigit() else 1):
        os.kill(os.getpid(), signal.SIGKILL)
