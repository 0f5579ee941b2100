"""Issuance: CSR -> policy -> backend -> verify what came back -> inventory -> delivery.

A rejection at any step writes nothing. Delivery comes after the commit: the files are
staged under temporary names, the rows committed with the delivery recorded as pending,
then the files renamed into place (``pki.issue.pending``). A failed commit removes the
staged files and leaves whatever was in place before untouched; a crash leaves a state
the next run completes. There is never a handed-out certificate without a row.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki import faults
from pki.backends import CertificateAuthority, InProcessSigner, SigningRequest
from pki.clock import Clock
from pki.errors import (
    DeliveryFailed,
    FleetPkiError,
    IssuedCertificateMismatch,
    OperatorError,
    PolicyViolation,
    StorageError,
)
from pki.issue import csr as csr_mod
from pki.issue import policy
from pki.issue.check import IssuingCa, fingerprint, subject_key_id, verify_issued
from pki.issue.keyreuse import KeyDecision, decide, key_id
from pki.issue.pending import NO_DELIVERY, Delivery, settle
from pki.issue.policy import CertificatePlan, PolicySettings, Violation
from pki.issue.profiles import get_profile
from pki.issue.results import BatchReport, Failure, Outcome
from pki.model import CertificateRecord, IssuedCertificate, IssueRequest, Status, isoformat
from pki.storage import AuditEvent, Inventory, NewCertificate

PEM = serialization.Encoding.PEM
log = logging.getLogger("fleetpki.issuance")

BATCH_COMMIT_SIZE = 1000
# Requests whose keys are looked up in the inventory at once.
LOOKUP_CHUNK = 200


class Issuer:
    """Issues certificates through one backend into one inventory."""

    def __init__(
        self,
        ca: CertificateAuthority,
        inventory: Inventory,
        clock: Clock,
        settings: PolicySettings | None = None,
        *,
        verify_signature: bool | None = None,
        on_issued: Callable[[tuple[CertificateRecord, ...]], list[str]] | None = None,
    ) -> None:
        """``on_issued`` is told about certificates once they are committed and delivered
        (the issuance hooks); what it reports failed is logged, never raised."""
        self.ca = ca
        self.on_issued = on_issued
        self.inventory = inventory
        self.clock = clock
        self.settings = settings or PolicySettings()
        # A certificate that came back from a remote CA has its signature checked against
        # the issuing CA. One this process just signed with the CA key it holds needs no
        # second check of the same key (saves an ECDSA verify per certificate).
        if verify_signature is None:
            verify_signature = not isinstance(ca, InProcessSigner)
        self.verify_signature = verify_signature
        self._chain = ca.chain()
        self._chain_pem = b"".join(c.public_bytes(PEM) for c in self._chain)
        self._issuing_pem = self._chain[0].public_bytes(PEM)
        self._issuing = IssuingCa.of(self._chain[0])
        self._issuer_name = self._chain[0].subject.rfc4514_string()
        self._issuer_key_id = subject_key_id(self._chain[0])

    @property
    def chain_pem(self) -> bytes:
        return self._chain_pem

    @property
    def issuing_not_after(self) -> dt.datetime:
        """When the issuing CA expires: no certificate may outlive it."""
        return self._issuing.not_after

    @property
    def issuing_not_before(self) -> dt.datetime:
        return self._issuing.certificate.not_valid_before_utc

    @property
    def issuing_pem(self) -> bytes:
        """The issuing CA certificate (what follows a leaf in a full chain)."""
        return self._issuing_pem

    def prepare(self, request: IssueRequest) -> SigningRequest:
        """Parse the CSR and apply the policy: raises before anything is signed."""
        facts = csr_mod.parse(request.csr_pem)
        profile = get_profile(request.profile, allow_wildcard=self.settings.allow_wildcard)
        plan = policy.evaluate(
            facts,
            profile,
            request,
            self.settings,
            self.clock.now(),
            self._issuing.not_after,
        )
        return SigningRequest(
            plan=plan,
            public_key=facts.public_key,
            csr=facts.csr,
            serial=x509.random_serial_number(),
        )

    def outcome(self, request: IssueRequest) -> Outcome:
        """Prepare, sign and check one request; storage is left to the caller.

        Operator errors become an ``Outcome`` with ``error``; backend failures raise.
        """
        return self.outcomes([request])[0]

    def outcomes(self, requests: Sequence[IssueRequest]) -> list[Outcome]:
        """``outcome`` for many: every CSR checked first, then the keys' certificates
        looked up at once (one query, not one per request), then each signed."""
        prepared: list[tuple[IssueRequest, SigningRequest | OperatorError, str]] = []
        for request in requests:
            try:
                ready = self.prepare(request)
                prepared.append((request, ready, key_id(ready.public_key)))
            except OperatorError as exc:
                prepared.append((request, exc, ""))
        kids = [kid for _, _, kid in prepared if kid]
        bound = self.inventory.active_with_keys(kids, self.clock.now()) if kids else {}
        seen: dict[str, str] = {}  # keys earlier in this batch (not yet recorded): whose
        results = []
        for request, signing, kid in prepared:
            if isinstance(signing, OperatorError):
                results.append(Outcome(request.name, error=signing))
                continue
            decision = decide(request, bound.get(kid, []))
            earlier = seen.setdefault(kid, request.name)
            if earlier != request.name and not decision.existing and not (
                request.allow_key_reuse
            ):
                decision = KeyDecision(violation=Violation(
                    "key-reused", f"this CSR's key is also {earlier!r}'s, earlier in this batch"
                ))  # fmt: skip
            results.append(self._signed(request, signing, kid, decision))
        return results

    def _signed(
        self, request: IssueRequest, signing: SigningRequest, kid: str, decision: KeyDecision
    ) -> Outcome:
        if decision.violation is not None:
            error = PolicyViolation(decision.violation.reason, decision.violation.message)
            return Outcome(request.name, error=error)
        if decision.existing is not None:  # a retried request: its certificate again
            plan = signing.plan
            asked = {*plan.dns_names, *(str(i) for i in plan.ip_addresses), *plan.uris}
            if asked != set(decision.existing.sans):  # not a retry: another request
                error = PolicyViolation(
                    "key-reused",
                    f"this key already has the active certificate "
                    f"{decision.existing.serial_hex} with other names; make a new key "
                    "(or --allow-key-reuse for a second certificate)",
                )
                return Outcome(request.name, error=error)
            return Outcome(request.name, issued=self._existing(decision.existing, kid))
        cert = self.ca.issue(signing)
        try:
            verify_issued(cert, signing, self._issuing, check_signature=self.verify_signature)
        except IssuedCertificateMismatch as exc:
            bad = self._result(cert, signing.plan, Status.QUARANTINED)
            return Outcome(request.name, error=exc, quarantined=bad)
        issued = self._result(cert, signing.plan, key=kid, reused=decision.reused)
        return Outcome(request.name, issued=issued)

    def _existing(self, record: CertificateRecord, kid: str) -> IssuedCertificate:
        pem = self.inventory.get_pem(record.serial).encode()
        return IssuedCertificate(record, pem, self._chain_pem, self._issuing_pem, key_id=kid,
                                 existing=True)  # fmt: skip

    def issue(self, request: IssueRequest, deliver: Delivery = NO_DELIVERY) -> IssuedCertificate:
        result = self.outcome(request)
        if result.quarantined is not None:
            self._quarantine(result.quarantined, request.actor)
        if result.error is not None:
            raise result.error
        assert result.issued is not None
        self._commit([result.issued], deliver, request.actor)
        return result.issued

    def issue_batch(
        self,
        requests: Iterable[IssueRequest],
        deliver: Delivery = NO_DELIVERY,
        progress: Callable[[str, FleetPkiError | None], None] | None = None,
        commit_size: int = BATCH_COMMIT_SIZE,
        *,
        workers: int = 1,
        actor: str = "cli",
        keep: bool = True,
    ) -> BatchReport:
        """Issue many; an operator error on one request is recorded and the rest go on.

        ``keep=False`` when nobody reads ``report.issued`` (only ``issued_count``): the
        forked workers then send back names and errors only, not every certificate.

        With ``workers`` > 1 and a remote CA, that many requests are in flight at once
        and this process commits rows ``commit_size`` at a time and delivers them. With
        ``workers`` > 1 and the in-process CA, that many forked processes each check,
        sign, commit and deliver chunks of requests (``deliver`` then runs in the worker:
        it must write somewhere, not into this process's memory). A storage or backend
        failure stops the batch (raised); everything committed before it stays issued
        and delivered.
        """
        if workers > 1 and self.signs_in_process:
            from pki.issue.forkpool import issue_forked

            return issue_forked(
                self, requests, deliver, progress, commit_size, workers, actor, keep
            )
        report = BatchReport()
        pending: list[IssuedCertificate] = []
        for result in self._outcomes(requests, workers):
            if result.quarantined is not None:
                self._quarantine(result.quarantined, actor)
            if result.error is not None:
                report.failed.append(Failure(result.name, result.error))
            elif result.issued is not None:
                pending.append(result.issued)
            if len(pending) >= commit_size:
                self._commit(pending, deliver, actor)
                report.issued_count += len(pending)
                if keep:
                    report.issued.extend(pending)
                pending = []
            if progress is not None:
                progress(result.name, result.error)
        if pending:
            self._commit(pending, deliver, actor)
            report.issued_count += len(pending)
            if keep:
                report.issued.extend(pending)
        return report

    # -- internals ------------------------------------------------------------------------

    @property
    def signs_in_process(self) -> bool:
        """True when signing is CPU work here (scale with processes); False when it is a
        remote call (scale with requests in flight: threads)."""
        return isinstance(self.ca, InProcessSigner)

    def _outcomes(self, requests: Iterable[IssueRequest], workers: int) -> Iterator[Outcome]:
        if workers <= 1:
            it = iter(requests)
            while chunk := list(itertools.islice(it, LOOKUP_CHUNK)):
                yield from self.outcomes(chunk)
            return
        # A remote CA (AWS Private CA; the in-process CA forks, see forkpool): the
        # time goes in round trips, so keep several requests in flight; the backend's
        # rate limiter keeps them within the quota.
        import multiprocessing.pool  # here: a single issuance never needs it

        with multiprocessing.pool.ThreadPool(workers) as threads:
            yield from threads.imap(self.outcome, requests)

    def _commit(self, issued: Sequence[IssuedCertificate], deliver: Delivery, actor: str) -> None:
        """Stage the files (outside the database's write lock: forked batch workers write
        theirs at the same time), commit the rows with their delivery pending, then
        deliver (rename) and clear the pending rows."""
        now = self.clock.now()
        rows = [NewCertificate(i.record, i.cert_pem.decode(), i.key_id) for i in issued
                if not i.existing]  # fmt: skip
        events = [self._audit_event(i, actor, now) for i in issued]
        pending = deliver.stage(issued)
        faults.reach(faults.ISSUE_STAGED)
        written = False
        try:
            with self.inventory.transaction() as conn:
                self.inventory.add_certificates(conn, rows, events)
                # a delivery again replaces any of the same certificate still pending
                self.inventory.clear_pending(conn, [i.record.serial for i in issued
                                                    if i.existing])  # fmt: skip
                self.inventory.record_pending(
                    conn, [(p.serial, p.to_json()) for p in pending], now
                )
                written = True
        except BaseException as exc:
            if not written:  # rolled back: nothing recorded, the staged files go
                for item in pending:
                    item.discard()
                raise
            # the COMMIT failed without an answer (a dropped connection): the rows may be
            # recorded or not. The staged files stay for the next run, which delivers them
            # if the rows are there and removes them if not.
            if pending and isinstance(exc, StorageError):
                raise StorageError(
                    f"{exc}; whether the certificate(s) were recorded is unknown: run the "
                    "same command again to finish"
                ) from None
            raise
        faults.reach(faults.ISSUE_COMMITTED)
        if pending:
            settled = settle(self.inventory, pending, now=now, actor=actor)
            if settled.withdrawn:
                _, why = settled.withdrawn[0]
                raise DeliveryFailed(
                    f"{len(settled.withdrawn)} certificate(s) recorded but not delivered, "
                    f"withdrawn (revoked as superseded): {why}"
                )
            if settled.dropped:
                _, why = settled.dropped[0]
                raise DeliveryFailed(f"could not deliver the certificate again: {why}")
        new = tuple(i.record for i in issued if not i.existing)
        if self.on_issued is not None and new:
            for warning in self.on_issued(new):
                log.warning("%s", warning)

    def _audit_event(self, issued: IssuedCertificate, actor: str, now: dt.datetime) -> AuditEvent:
        record = issued.record
        detail: dict[str, object] = {
            "profile": record.profile,
            "thing": record.thing,
            "common_name": record.common_name,
            "backend": record.backend,
            "not_after": isoformat(record.not_after),
            "issuer_key_id": record.issuer_key_id,
        }
        if issued.key_reused:
            detail["key_reused"] = True
        return AuditEvent(
            at=now,
            actor=actor,
            action="redeliver" if issued.existing else "issue",
            serial=record.serial_hex,
            detail=detail,
        )

    def _result(
        self,
        cert: x509.Certificate,
        plan: CertificatePlan,
        status: Status = Status.ACTIVE,
        *,
        key: str | None = None,
        reused: bool = False,
    ) -> IssuedCertificate:
        record = CertificateRecord(
            serial=cert.serial_number,
            thing=plan.thing,
            common_name=plan.common_name,
            profile=plan.profile.name,
            status=status,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            fingerprint_sha256=fingerprint(cert),
            issuer=self._issuer_name,
            backend=self.ca.name,
            created_at=self.clock.now(),
            sans=(*plan.dns_names, *(str(i) for i in plan.ip_addresses), *plan.uris),
            issuer_key_id=self._issuer_key_id,  # the CA whose signature was checked
        )
        return IssuedCertificate(
            record=record,
            cert_pem=cert.public_bytes(PEM),
            chain_pem=self._chain_pem,
            issuing_pem=self._issuing_pem,
            key_id=key,
            key_reused=reused,
        )

    def _quarantine(self, bad: IssuedCertificate, actor: str) -> None:
        """Keep a record of a certificate the backend got wrong; it is never handed out."""
        now = self.clock.now()
        with self.inventory.transaction() as conn:
            self.inventory.add_certificates(
                conn, [NewCertificate(bad.record, bad.cert_pem.decode())]
            )
            self.inventory.audit(
                conn,
                [
                    AuditEvent(
                        now,
                        actor,
                        "quarantine",
                        bad.record.serial_hex,
                        {"reason": "returned certificate does not match the request"},
                    )
                ],
            )
