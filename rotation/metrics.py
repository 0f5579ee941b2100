"""Prometheus metrics of the rotation daemon, on a registry of their own (tests and two
services in one process never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requested = Counter(
            "fleetpki_rotation_requests",
            "Rotation requests the broker accepted for delivery to a device (re-sends too)",
            registry=r,
        )
        self.sent = Counter(
            "fleetpki_rotation_messages_sent",
            "Messages to devices the broker accepted for delivery, by kind (request, "
            "certificate, certificate-error)",
            ["kind"],
            registry=r,
        )
        self.issued = Counter(
            "fleetpki_rotation_certificates_issued",
            "Certificates issued for rotation (devices and servers)",
            registry=r,
        )
        self.confirmed = Counter(
            "fleetpki_rotation_confirmed",
            "Rotations the device confirmed after reconnecting with the new certificate",
            registry=r,
        )
        self.confirmed_by_use = Counter(
            "fleetpki_rotation_confirmed_by_use",
            "Rotations confirmed because a relying party accepted the new certificate (the "
            "device's confirmation was lost); also counted in fleetpki_rotation_confirmed_total",
            registry=r,
        )
        self.late_confirmed = Counter(
            "fleetpki_rotation_confirmed_late",
            "Rotations confirmed after they had failed (the device was late): each was also "
            "counted in fleetpki_rotation_failed_total when it failed",
            registry=r,
        )
        self.completed = Counter(
            "fleetpki_rotation_completed",
            "Rotations finished: the old certificate revoked as superseded",
            registry=r,
        )
        self.failed = Counter(
            "fleetpki_rotation_failed", "Rotations that failed", ["reason"], registry=r
        )
        self.bad_messages = Counter(
            "fleetpki_rotation_bad_messages",
            "Messages from devices that were malformed or named no open rotation",
            registry=r,
        )
        self.open = Gauge(
            "fleetpki_rotation_open", "Rotations in progress, by state", ["state"], registry=r
        )
        self.due = Gauge(
            "fleetpki_certificates_due",
            "Certificates past their renewal time at the last plan",
            registry=r,
        )
        self.last_plan = Gauge(
            "fleetpki_rotation_last_plan_timestamp_seconds",
            "When the daemon last planned (POSIX seconds)",
            registry=r,
        )
        self._crl_and_state(r)
        self._fleet(r)
        self._asking(r)
        self.duration = Histogram(
            "fleetpki_rotation_seconds",
            "From the rotation request to the device's confirmation",
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600),
            registry=r,
        )

    def _asking(self, r: CollectorRegistry) -> None:
        """How the asking goes: re-sends, and plans whose asking stopped."""
        self.waves_stopped = Counter(
            "fleetpki_rotation_waves_stopped",
            "Plans (daemon) whose asking stopped: a canary failed or too many failed",
            registry=r,
        )
        self.resent = Counter(
            "fleetpki_rotation_requests_resent",
            "Requests sent again to devices that had not answered (same rotation, backoff)",
            registry=r,
        )

    def _fleet(self, r: CollectorRegistry) -> None:
        """The fleet's expiry as aggregates per profile, not one series per certificate:
        cert-manager's per-certificate gauges would be a million series for a million
        devices. The earliest expiry and the counts per window answer the same alerts."""
        self.active = Gauge(
            "fleetpki_certificates_active",
            "Active, unexpired device and server certificates, by profile",
            ["profile"],
            registry=r,
        )
        self.earliest_expiry = Gauge(
            "fleetpki_certificate_earliest_expiration_timestamp_seconds",
            "The earliest notAfter among active certificates, by profile (POSIX seconds)",
            ["profile"],
            registry=r,
        )
        self.expiring = Gauge(
            "fleetpki_certificates_expiring",
            "Active certificates expiring within a window (1d, 7d, 30d, 90d), by profile",
            ["profile", "within"],
            registry=r,
        )
        self.ca_expiry = Gauge(
            "fleetpki_ca_expiration_timestamp_seconds",
            "notAfter of the issuing CA (POSIX seconds): no certificate may outlive it",
            ["ca"],
            registry=r,
        )
        self.ca_rollover_prepare = Gauge(
            "fleetpki_ca_rollover_prepare_timestamp_seconds",
            "When the CA's scheduled rollover prepares its successor (rollover_prepare_at of "
            "its life; POSIX seconds)",
            ["ca"],
            registry=r,
        )
        self.ca_rollover_activate = Gauge(
            "fleetpki_ca_rollover_activate_timestamp_seconds",
            "The earliest the successor may issue (rollover_activate_at of the CA's life)",
            ["ca"],
            registry=r,
        )

    def _crl_and_state(self, r: CollectorRegistry) -> None:
        """The CRLs as published and as served, the broker connection, the pause."""
        self.crl_next_update = Gauge(
            "fleetpki_crl_next_update_timestamp_seconds",
            "nextUpdate of each CA's published CRL (POSIX seconds), by CA (issuing, root)",
            ["ca"],
            registry=r,
        )
        self.crl_served_next_update = Gauge(
            "fleetpki_crl_served_next_update_timestamp_seconds",
            "nextUpdate of the CRL each relying party actually serves (POSIX seconds)",
            ["relying_party", "ca"],
            registry=r,
        )
        self.crl_served_ok = Gauge(
            "fleetpki_crl_served_ok",
            "1 when a relying party serves the home's current, unexpired CRLs, else 0",
            ["relying_party"],
            registry=r,
        )
        self.crl_repairs = Counter(
            "fleetpki_crl_served_repairs",
            "Times the daemon found a relying party serving an old or stale CRL and "
            "handed it the current one",
            ["relying_party"],
            registry=r,
        )
        self.broker_connected = Gauge(
            "fleetpki_rotation_broker_connected",
            "1 while the rotation service is connected to the broker, else 0",
            registry=r,
        )
        self.paused = Gauge(
            "fleetpki_rotation_paused",
            "1 while rotation is paused ('fleetpki rotation pause'), else 0",
            registry=r,
        )
