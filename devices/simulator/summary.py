"""What a simulation found, as frozen values: per device (``DeviceReport``, from what a
worker sent back), per revoked device (``Cut``), the rotation wave (``WaveReport``), the
checks, and the whole run (``FleetSummary``, whose ``to_json`` is the ``--json`` output)."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import asdict, dataclass, fields
from typing import Any

from devices.simulator.config import SimConfig
from pki.stats import percentile


@dataclass(frozen=True)
class DeviceReport:
    """One device's outcome (wall-clock times, seconds)."""

    name: str
    client: str = "paho"
    connected: bool = False
    refused: str | None = None
    connect_latency: float | None = None
    started_at: float | None = None
    connected_at: float | None = None
    sent: int = 0
    acked: int = 0
    disconnected_at: float | None = None
    https_ok: bool | None = None
    https_refused_at: float | None = None
    https_reason: str | None = None
    reconnect_reason: str | None = None
    rotation_requested_at: float | None = None
    rotation_confirmed_at: float | None = None
    rotation_error: str | None = None
    rotated_serial: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeviceReport:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Cut:
    """How a revoked device was cut off."""

    thing: str
    mqtt_cut_seconds: float | None
    https_refused_seconds: float | None
    https_reason: str | None
    reconnect: str | None


@dataclass(frozen=True)
class OldCertificate:
    """A rotated device's replaced certificate, tried again: the refusal on each side."""

    thing: str
    mqtt: str | None
    https: str | None


@dataclass(frozen=True)
class WaveReport:
    """The rotation wave: devices asked and confirmed, how long, what the service said."""

    devices_asked: int
    devices_confirmed: int
    device_errors: dict[str, int]
    wave_seconds: float | None
    per_device_seconds: dict[str, float | None]
    service: dict[str, Any] | None
    service_error: str | None
    service_log: list[str]
    old_certificates: list[OldCertificate]


@dataclass(frozen=True)
class Checks:
    all_valid_connected: bool
    no_lost_messages: bool
    valid_https_accepted: bool
    revoked_cut: bool
    revoked_refused_by_https: bool
    expired_refused: bool
    impostors_refused: bool
    no_worker_errors: bool
    rotation_completed: bool | None = None  # None: no rotation in this scenario
    superseded_refused: bool | None = None

    @property
    def passed(self) -> bool:
        return all(v for v in asdict(self).values() if v is not None)

    def failed(self) -> list[str]:
        return [k for k, v in asdict(self).items() if v is False]

    def to_json(self) -> dict[str, bool]:
        data = {k: v for k, v in asdict(self).items() if v is not None}
        data["passed"] = self.passed
        return data


@dataclass(frozen=True)
class RunFacts:
    """What the parent knows besides the devices' reports."""

    expired: tuple[str, ...]
    victims: tuple[str, ...]
    revoked_at: dict[str, float]
    impostors: list[dict[str, Any]]
    access: list[dict[str, Any]]
    errors: list[str]
    wall_seconds: float
    issue_seconds: float
    workers: int
    issued: int


@dataclass(frozen=True)
class FleetSummary:
    config: SimConfig
    devices: list[DeviceReport]
    facts: RunFacts
    cuts: list[Cut]
    checks: Checks
    rotation: WaveReport | None = None

    @property
    def ok(self) -> bool:
        return self.checks.passed

    def to_json(self) -> dict[str, Any]:
        devices, facts = self.devices, self.facts
        valid = _valid(devices, facts)
        sent, acked = sum(d.sent for d in valid), sum(d.acked for d in valid)
        latencies = [d.connect_latency for d in devices if d.connect_latency is not None]
        access = facts.access
        return {
            "scenario": self.config.scenario,
            "config": asdict(self.config),
            "devices": len(devices),
            "issued": facts.issued,
            "workers": facts.workers,
            "clients": dict(Counter(d.client for d in devices)),
            "connected": sum(1 for d in devices if d.connected),
            "refused": dict(Counter(d.refused for d in devices if d.refused)),
            "messages": {"sent": sent, "acked": acked, "lost": sent - acked},
            "connect_latency_ms": {
                "p50": _ms(statistics.median(latencies) if latencies else None),
                "p99": _ms(percentile(latencies, 0.99)),
            },
            "connect_phase": connect_phase(devices),
            "revoked": [asdict(c) for c in self.cuts],
            "impostors": facts.impostors,
            "access_log": {
                "accepted": sum(1 for e in access if e.get("result") == "accepted"),
                "refused": dict(
                    Counter(e.get("reason") for e in access if e.get("result") == "refused")
                ),
            },
            "timing": {
                "wall_seconds": round(facts.wall_seconds, 2),
                "issue_seconds": round(facts.issue_seconds, 3),
            },
            "rotation": asdict(self.rotation) if self.rotation is not None else None,
            "errors": facts.errors,
            "checks": self.checks.to_json(),
        }


def _valid(devices: list[DeviceReport], facts: RunFacts) -> list[DeviceReport]:
    return [d for d in devices if d.name not in facts.expired and d.name not in facts.victims]


def _seconds_after(at: float | None, start: float | None) -> float | None:
    return round(at - start, 3) if at and at > 0 and start else None


def cuts(devices: list[DeviceReport], facts: RunFacts) -> list[Cut]:
    return [
        Cut(
            thing=d.name,
            mqtt_cut_seconds=_seconds_after(d.disconnected_at, facts.revoked_at.get(d.name)),
            https_refused_seconds=_seconds_after(d.https_refused_at, facts.revoked_at.get(d.name)),
            https_reason=d.https_reason,
            reconnect=d.reconnect_reason,
        )
        for d in devices
        if d.name in facts.victims
    ]


def _rotation_checks(
    devices: list[DeviceReport], facts: RunFacts, rotation: WaveReport
) -> dict[str, bool]:
    service = rotation.service or {}
    states = service.get("states", {})
    rotating = [d for d in devices if d.name not in facts.expired]
    old = rotation.old_certificates
    return {
        "rotation_completed": (
            rotation.service_error is None
            and states.get("completed", 0) == len(rotating)
            and service.get("rotations") == len(rotating)
            and all(d.rotation_confirmed_at for d in rotating)
        ),
        "superseded_refused": bool(old)
        and all(o.mqtt == "revoked" and o.https == "revoked" for o in old),
    }


def checks(
    devices: list[DeviceReport], facts: RunFacts, cut: list[Cut], rotation: WaveReport | None
) -> Checks:
    valid = _valid(devices, facts)
    return Checks(
        all_valid_connected=all(d.connected for d in valid),
        no_lost_messages=sum(d.sent for d in valid) == sum(d.acked for d in valid),
        valid_https_accepted=all(d.https_ok for d in valid),
        revoked_cut=all(c.mqtt_cut_seconds is not None and c.reconnect == "revoked" for c in cut),
        revoked_refused_by_https=all(c.https_reason == "revoked" for c in cut),
        expired_refused=all(d.refused == "expired" for d in devices if d.name in facts.expired),
        impostors_refused=all(i["refused"] for i in facts.impostors),
        no_worker_errors=not facts.errors,
        **(_rotation_checks(devices, facts, rotation) if rotation is not None else {}),
    )


def summarise(
    config: SimConfig,
    stats: list[dict[str, Any]],
    facts: RunFacts,
    rotation: WaveReport | None = None,
) -> FleetSummary:
    devices = [DeviceReport.from_json(s) for s in stats]
    cut = cuts(devices, facts)
    return FleetSummary(config, devices, facts, cut, checks(devices, facts, cut, rotation),
                        rotation)  # fmt: skip


def connect_phase(devices: list[DeviceReport]) -> dict[str, float | None]:
    """How fast the fleet got on: first connect attempt to last CONNACK, and the rate."""
    started = [d.started_at for d in devices if d.started_at is not None]
    done = [d.connected_at for d in devices if d.connected_at is not None]
    if not started or not done:
        return {"seconds": None, "connects_per_s": None}
    seconds = max(done) - min(started)
    return {
        "seconds": round(seconds, 3),
        "connects_per_s": round(len(done) / seconds, 1) if seconds > 0 else None,
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)
