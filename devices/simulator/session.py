"""A simulation run as the CLI (and the benchmarks) start one: in a home of its own
unless the operator named one, against the running stand-ins or ones started for it."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from devices import standins
from devices.simulator.config import SimConfig
from devices.simulator.fleet import Progress, simulate
from devices.simulator.summary import FleetSummary

if TYPE_CHECKING:
    from pki.app import App


def simulation_home(app: App, folder: Path) -> App:
    """A fresh home in ``folder`` with a CA and an SQLite inventory of its own (never the
    operator's FLEETPKI_DATABASE_URL), for one simulator run."""
    from pki.ca.setup import init_ca

    sim = app.elsewhere(folder / "home")
    sim.database = sim.home.sqlite_url
    init_ca(sim.home, sim.inventory(create=True), sim.clock, "ec-p256", "fleetpki-sim", 3650, 1825)
    return sim


@contextlib.contextmanager
def own_home(app: App, say: Callable[[str], None]) -> Iterator[App]:
    """``simulation_home`` in a temporary folder, removed afterwards (whatever happens)."""
    with contextlib.ExitStack() as cleanup:
        folder = Path(tempfile.mkdtemp(prefix="fleetpki-sim-"))
        cleanup.callback(shutil.rmtree, folder, True)  # registered before anything fails
        sim = simulation_home(app, folder)
        say(
            f"simulating in a home of its own: {sim.home_path} (a new CA and inventory, "
            "removed afterwards; 'fleetpki --home DIR fleet simulate' uses DIR)"
        )
        yield sim


def run(app: App, config: SimConfig, on_progress: Progress) -> FleetSummary:
    """``simulate`` against this home's stand-ins: the running ones, or ones started for
    the run and stopped after it."""
    home = app.home
    running = standins.load_state(home)
    started_here = running is None or not standins.alive(running)
    stand = standins.up(home, app.clock, app) if started_here else running
    assert stand is not None
    try:
        return simulate(config, app, stand, on_progress)
    finally:
        if started_here:
            standins.down(home)


__all__ = ["own_home", "run", "simulation_home"]
