"""A rotation wave beside the fleet: ``fleetpki rotation rotate THING... --grace 0`` run
the way an operator would start one (the simulator does not import ``rotation``)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import IO, Any

from devices.simulator.summary import DeviceReport, OldCertificate, WaveReport
from pki.stats import percentile


class RotationWave:
    def __init__(self, home: Path, things: list[str], in_flight: int = 0) -> None:
        self.home = home
        self.things = things
        self.in_flight = in_flight  # the wave's --max-in-flight (0: every device at once)
        self.started = False
        self.proc: subprocess.Popen[bytes] | None = None
        self.result: dict[str, Any] | None = None
        self.error: str | None = None
        self._out: IO[bytes] | None = None
        self._err: IO[bytes] | None = None
        self.stderr = ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.result is None and self.error is None

    @property
    def busy(self) -> bool:
        """Not started yet, or not finished."""
        return self.running or not self.started

    def start(self) -> None:
        self.started = True
        # files, not pipes: a full pipe would block the command
        self._out = tempfile.TemporaryFile()  # noqa: SIM115 (outlives this call; closed by poll)
        self._err = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pki", "--home", str(self.home), "rotation", "rotate",
             *self.things, "--grace", "0", "--timeout", "5m", "--json",
             *(["--max-in-flight", str(self.in_flight)] if self.in_flight else [])],
            stdout=self._out,
            stderr=self._err,
        )  # fmt: skip

    def poll(self) -> None:
        if self.proc is None or self.proc.poll() is None:
            return
        if self._out is None or self._err is None or self._out.closed:
            return
        self._out.seek(0)
        self._err.seek(0)
        text = self._out.read().decode()
        stderr = self._err.read().decode()
        self._out.close()
        self._err.close()
        self.stderr = stderr
        try:
            self.result = json.loads(text)
        except json.JSONDecodeError:
            lines = stderr.strip().splitlines()
            self.error = lines[-1] if lines else f"exit {self.proc.returncode}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.poll()
        if self.result is None and self.error is None:
            self.error = "the rotation wave did not finish"

    def report(self, devices: list[DeviceReport], old: list[OldCertificate]) -> WaveReport:
        asked = [d.rotation_requested_at for d in devices if d.rotation_requested_at]
        done = [d.rotation_confirmed_at for d in devices if d.rotation_confirmed_at]
        each = sorted(
            d.rotation_confirmed_at - d.rotation_requested_at
            for d in devices
            if d.rotation_confirmed_at and d.rotation_requested_at
        )
        return WaveReport(
            devices_asked=len(asked),
            devices_confirmed=len(done),
            device_errors=dict(Counter(d.rotation_error for d in devices if d.rotation_error)),
            wave_seconds=round(max(done) - min(asked), 3) if asked and done else None,
            per_device_seconds={
                "p50": round(statistics.median(each), 3) if each else None,
                "p99": round(percentile(each, 0.99) or 0.0, 3) if each else None,
            },
            service=self.result,
            service_error=self.error,
            service_log=self.stderr.strip().splitlines()[-5:] if self.error else [],
            old_certificates=old,
        )
