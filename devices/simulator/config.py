"""What a simulation is asked to do (``SimConfig``) and what one worker process gets
(``Shard``): plain values that cross the process boundary."""

from __future__ import annotations

from dataclasses import dataclass

SCENARIOS = ("steady", "revocation", "impostors", "expiry", "rotation", "all")


@dataclass(frozen=True)
class SimConfig:
    devices: int = 100
    duration: float = 10.0
    rate: float = 1.0  # telemetry messages per device per second
    scenario: str = "steady"
    sdk_share: float = 0.1
    revoke: int = 1
    workers: int = 0  # 0: one per CPU, at most 4
    connect_rate: float = 0.0  # new connections per second across the fleet; 0: as fast as possible
    wave_in_flight: int = 0  # rotation scenario: the wave's --max-in-flight (0: unpaced)

    def has(self, scenario: str) -> bool:
        return self.scenario in (scenario, "all")


@dataclass(frozen=True)
class Shard:
    index: int
    names: tuple[str, ...]
    sdk: frozenset[str]
    victims: frozenset[str]
    folder: str
    ca_file: str
    mqtt_port: int
    https_port: int
    topic_prefix: str
    start_at: float  # wall clock
    stop_at: float  # seconds of steady telemetry once connected
    connect_interval: float
    rate: float
    hard_stop: float  # seconds after connecting: stop even if the parent is still busy
