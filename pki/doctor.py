"""``fleetpki doctor``: what crashes, restores and neglect leave behind in a home and its
inventory, each with how to repair it — and, with ``repair``, the repairs that are safe.

Checks: deliveries recorded and never done; temporary files left in ``--out`` folders;
delivered certificates (``--out`` folders) the inventory has no row for; revoked
certificates the published CRL does not list yet; CRL numbers in the inventory behind the
published file; CRLs near or past ``nextUpdate``; active certificates of a CA the home no
longer issues from; active certificates no published trust bundle covers (from the
ledger); the audit log's hash chain.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pki.errors import FleetPkiError, NotFound
from pki.model import Status, serial_hex

if TYPE_CHECKING:
    from pki.app import App


@dataclass(frozen=True)
class Finding:
    check: str
    problem: str
    fix: str  # what the operator does (or what --repair did)
    repaired: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "problem": self.problem, "fix": self.fix,
                "repaired": self.repaired}  # fmt: skip


@dataclass
class Examination:
    findings: list[Finding] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def open_problems(self) -> list[Finding]:
        return [f for f in self.findings if not f.repaired]


def examine(app: App, outs: Sequence[Path], *, repair: bool) -> Examination:
    result = Examination()
    for name, check in (
        ("pending deliveries", _pending),
        ("temporary files", _temporaries),
        ("unrecorded certificates", _unrecorded),
        ("CRLs", _crls),
        ("issuing CA", _issuers),
        ("trust stores", _trust_stores),
        ("audit log", _audit),
    ):
        result.checked.append(name)
        result.findings += list(check(app, outs, repair))
    return result


def _pending(app: App, outs: Sequence[Path], repair: bool) -> Iterator[Finding]:
    from pki.issue.pending import recorded, settle

    waiting = recorded(app.inventory())
    if not waiting:
        return
    if not repair:
        for item in waiting:
            yield Finding(
                "pending deliveries",
                f"certificate {serial_hex(item.serial)} was recorded by an interrupted run "
                f"and never delivered into {', '.join(sorted(map(str, item.folders)))}",
                "run the same command again, or 'fleetpki doctor --repair' (delivers it, or "
                "withdraws it when its staged files are gone)",
            )
        return
    settled = settle(app.inventory(), waiting, now=app.now(), actor=app.actor)
    for item in settled.delivered:
        yield Finding("pending deliveries",
                      f"certificate {serial_hex(item.serial)} recorded, never delivered",
                      "delivered", repaired=True)  # fmt: skip
    for item, why in settled.dropped:
        yield Finding("pending deliveries",
                      f"certificate {serial_hex(item.serial)} was to be delivered again",
                      f"dropped (it stays active where it was delivered before): {why}",
                      repaired=True)  # fmt: skip
    for item, why in settled.withdrawn:
        yield Finding("pending deliveries",
                      f"certificate {serial_hex(item.serial)} recorded, never delivered",
                      f"withdrawn (revoked as superseded): {why}", repaired=True)  # fmt: skip


def _folders(outs: Sequence[Path]) -> list[Path]:
    from pki.issue.pending import delivery_folders

    return [f for out in outs for f in delivery_folders(out, per_thing=True)]


def _temporaries(app: App, outs: Sequence[Path], repair: bool) -> Iterator[Finding]:
    from pki.issue.pending import stale_temporaries

    for path in stale_temporaries(_folders(outs)):
        if repair:
            path.unlink(missing_ok=True)
        yield Finding("temporary files", f"{path} was left by a run that stopped",
                      "removed" if repair else "'fleetpki doctor --repair' removes it",
                      repaired=repair)  # fmt: skip


def _unrecorded(app: App, outs: Sequence[Path], repair: bool) -> Iterator[Finding]:
    """A certificate of this CA in a delivery folder without a row: nobody can revoke it
    and no plan renews it. Repair records it (audited 'adopt'), after checking that the
    CA signed it."""
    from pki.issue.adopt import adopt, load_delivered

    issuing = app.ca().chain()[0]
    for folder in _folders(outs):
        cert = load_delivered(folder)
        if cert is None or cert.issuer != issuing.subject:
            continue
        try:
            app.inventory().get(cert.serial_number)
            continue
        except NotFound:
            pass
        where = f"{folder}: certificate {serial_hex(cert.serial_number)}"
        if not repair:
            yield Finding(
                "unrecorded certificates",
                f"{where} is not in the inventory",
                "'fleetpki doctor --repair' records it (then it can be revoked)",
            )
            continue  # fmt: skip
        try:
            adopt(app, cert, issuing)
        except FleetPkiError as exc:
            yield Finding("unrecorded certificates", f"{where} is not in the inventory",
                          f"not recorded: {exc}")  # fmt: skip
        else:
            yield Finding("unrecorded certificates", f"{where} was not in the inventory",
                          "recorded (audited as 'adopt')", repaired=True)  # fmt: skip


def _crls(app: App, outs: Sequence[Path], repair: bool) -> Iterator[Finding]:
    from pki.backends import CrlSigner
    from pki.revocation.crl import crl_health, revoked_serials

    ca = app.ca()
    if not isinstance(ca, CrlSigner):
        return  # the backend publishes its own CRL
    files, now = app.home.crl_files, app.now()
    chain = ca.chain()
    problems: list[tuple[str, str]] = []
    for which, cert in (("issuing", chain[0]), ("root", chain[-1])):
        crl = files.load(which)
        issuer = cert.subject.rfc4514_string()
        recorded = app.inventory().latest_crl_number(issuer)
        published = files.number(which)
        if published is not None and recorded < published:
            problems.append((which, f"the inventory's {which} CRL number ({recorded}) is "
                                    f"behind the published file's ({published}): a "
                                    "restored or new inventory"))  # fmt: skip
        health = crl_health(which, crl, now)
        message = health.message(now)
        if message is not None:
            problems.append((which, message))
        if which == "issuing" and crl is not None:
            listed = revoked_serials(crl)
            missing = [
                r for r in app.inventory().find(now=now, status=Status.REVOKED)
                if r.serial not in listed and r.issuer == issuer
            ]  # fmt: skip
            if missing:
                problems.append((which, f"{len(missing)} revoked certificate(s) not on the "
                                        "published CRL yet"))  # fmt: skip
    yield from _crl_findings(app, problems, repair)


def _crl_findings(app: App, problems: list[tuple[str, str]], repair: bool) -> Iterator[Finding]:
    from pki.revocation.signing import sign_and_publish

    for which in sorted({w for w, _ in problems}):
        messages = [m for w, m in problems if w == which]
        command = "fleetpki crl" + (" --root" if which == "root" else "")
        if not repair:
            for message in messages:
                yield Finding(
                    "CRLs",
                    message,
                    f"'{command}' (or doctor --repair) re-signs it; "
                    "its number goes past the published one",
                )
            continue  # fmt: skip
        try:
            result = sign_and_publish(app.home, app.inventory(), app.ca(), app.clock,
                                      app.actor, which=which)  # fmt: skip
        except FleetPkiError as exc:
            for message in messages:
                yield Finding("CRLs", message, f"not repaired: {exc}; run '{command}'")
            continue
        for message in messages:
            yield Finding("CRLs", message, f"re-signed: {which} CRL #{result.number}",
                          repaired=True)  # fmt: skip


def _issuers(app: App, outs: Sequence[Path], repair: bool) -> Iterator[Finding]:
    issuing = app.ca().chain()[0].subject.rfc4514_string()
    others: dict[str, int] = {}
    for record in app.inventory().find(now=app.now(), status=Status.ACTIVE):
        if record.issuer != issuing:
            others[record.issuer] = others.get(record.issuer, 0) + 1
    for issuer, count in sorted(others.items()):
        yield Finding("issuing CA", f"{count} active certificate(s) from {issuer}, which this "
                      "home no longer issues from: relying parties must still trust it",
                      "keep that CA in the trust bundles until they expire, or re-issue "
                      "them (fleetpki rotation rotate)")  # fmt: skip


def _trust_stores(app: App, outs: Sequence[Path], repair: bool) -> Iterator[Finding]:
    """Active certificates that the bundle an endpoint was last pointed at does not cover:
    none of the CAs they chain to is in it (from the ledger: offline, no AWS call)."""
    from pki.aws.bundles import Target
    from pki.issue.policy import PROBE_THING

    latest: dict[str, Any] = {}
    for version in app.inventory().bundle_history():  # oldest first: the last one stays
        # an endpoint's trust store; an upload alone (no endpoint reads it yet) is none
        if version.target in {t.value for t in Target} and version.endpoint:
            latest[version.endpoint] = version
    if not latest:
        return
    chains = _ca_chains(app)
    issuers: dict[str, int] = {}
    # client certificates: what an mTLS endpoint's trust store verifies
    for record in app.inventory().find(now=app.now(), status=Status.ACTIVE, profile="device"):
        if record.thing != PROBE_THING:  # fleetpki's own canary is not the fleet
            issuers[record.issuer] = issuers.get(record.issuer, 0) + 1
    for where, version in sorted(latest.items()):
        label = f"the {version.target} bundle of {where} (ledger #{version.id})"
        if version.cas is None:
            yield Finding("trust stores", f"{label} was published before fleetpki recorded "
                          "what a bundle holds: its coverage is unknown",
                          "publish it again (fleetpki bundle publish …) to record it")  # fmt: skip
            continue
        for issuer, count in sorted(issuers.items()):
            if not set(chains.get(issuer, ())) & set(version.cas):
                yield Finding("trust stores", f"{count} active device certificate(s) from {issuer} "
                              f"chain to no CA in {label}: that endpoint refuses them",
                              "publish a bundle that holds their CA (fleetpki bundle publish; "
                              "--include FILE for another CA generation)")  # fmt: skip


def _ca_chains(app: App) -> dict[str, list[str]]:
    """Each CA subject the inventory knows -> the SHA-256 of it and of the CAs above it."""
    from pki.aws.bundles import der_sha256
    from pki.aws.trust import ca_certificates

    by_subject = {cert.subject.rfc4514_string(): cert for cert in ca_certificates(app, None)}
    chains: dict[str, list[str]] = {}
    for subject in by_subject:
        chain, seen, at = [], set(), subject
        while at in by_subject and at not in seen:  # up to the self-signed root
            seen.add(at)
            chain.append(der_sha256(by_subject[at]))
            at = by_subject[at].issuer.rfc4514_string()
        chains[subject] = chain
    return chains


def _audit(app: App, outs: Sequence[Path], repair: bool) -> Iterator[Finding]:
    report = app.inventory().verify_audit()
    for problem in report.problems:
        yield Finding("audit log", problem, "compare with an exported copy (audit --export); "
                      "the log cannot be repaired, only investigated")  # fmt: skip
