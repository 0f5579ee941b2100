"""Local stand-ins for the cloud side, started and stopped as one (``fleetpki dev up/down``).

- **Mosquitto** playing IoT Core's data plane (``broker``): a TLS listener on a free
  loopback port that requires a client certificate, takes the certificate CN as the
  username, checks the CAs' CRLs, and per-thing roles in the dynamic-security plugin
  equivalent to the IoT policy (``<prefix>/<thing>/#``). The CRL is re-read on SIGHUP;
  the live sessions of a revoked device are cut through the plugin (``deleteClient``
  kicks every connection of that username), on a password-protected admin listener
  bound to loopback.
- **An HTTPS endpoint** playing API Gateway / ALB with mTLS (``devices.https_standin``),
  which also serves the CRL distribution points the config names (``material``).
- **moto_server** for the AWS control plane, unless ``AWS_ENDPOINT_URL`` is set.

``lifecycle`` starts and stops them; ``state`` is what a running set looks like
(``HOME/dev/state.json``). The names below are what the rest of fleetpki uses.
"""

from devices.standins.broker import cut_sessions, register_things, reload_crl
from devices.standins.lifecycle import down, restart_broker, up
from devices.standins.state import (
    ADMIN_USER,
    ROTATION_USER,
    TOPIC_PREFIX,
    DevState,
    alive,
    broker_pid,
    dev_dir,
    load_state,
    ports_path,
    read_access_log,
    running,
    state_path,
)
from pki.processes import HOST

__all__ = [
    "ADMIN_USER",
    "HOST",
    "ROTATION_USER",
    "TOPIC_PREFIX",
    "DevState",
    "alive",
    "broker_pid",
    "cut_sessions",
    "dev_dir",
    "down",
    "load_state",
    "ports_path",
    "read_access_log",
    "register_things",
    "reload_crl",
    "restart_broker",
    "running",
    "state_path",
    "up",
]
