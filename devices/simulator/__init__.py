"""The fleet simulator: N devices with their own keys, certificates from CSRs through
pki's batch issuance, connected to the stand-ins over mTLS, publishing QoS 1 telemetry.

- ``config``: what a run is asked to do (``SimConfig``) and one worker's part (``Shard``).
- ``fleet``: the parent. It issues the certificates, starts worker *processes* (TLS
  handshakes are CPU: threads would share one core), starts the rotation wave
  (``wave``), runs the impostors, revokes the victims mid-run.
- ``worker``: one worker process driving its devices' paho clients from one selector
  loop (no thread per device) and the SDK devices through the CRT's own threads.
- ``summary``: what the run found, as frozen values, and its checks.
- ``session``: a run as the CLI starts one (its own home, stand-ins started for it).
"""

from devices.simulator.config import SCENARIOS, Shard, SimConfig

__all__ = ["SCENARIOS", "Shard", "SimConfig"]  # FleetSummary: devices.simulator.summary
