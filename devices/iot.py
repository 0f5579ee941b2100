"""AWS IoT Core: CA registration, thing provisioning, certificate status, deprovisioning.

The only ``devices`` module that talks to AWS (boto3 is imported lazily, so the
revocation hook costs nothing when no certificate was registered). Region, endpoint and
credentials come from the usual AWS settings. moto accepts any status change, so the
legal transitions are enforced here: REVOKED is final.

What fleetpki registered is recorded in its own tables (``devices.store``) on the
inventory's database.
"""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pki.aws.client import error_code
from pki.clock import Clock
from pki.errors import BackendError, NotFound, OperatorError, PolicyViolation
from pki.model import IssuedCertificate, IssueRequest

if TYPE_CHECKING:
    from pki.issue.issuer import Issuer
    from pki.issue.pending import Delivery
    from pki.issue.results import Failure

from devices import store

POLICY_NAME = "fleetpki-device"
TOPIC_PREFIX = "things"
BACKEND = "IoT Core"


class IotStatus(enum.StrEnum):
    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
    REVOKED = "REVOKED"


_LEGAL = {
    IotStatus.ACTIVE: {IotStatus.INACTIVE, IotStatus.REVOKED},
    IotStatus.INACTIVE: {IotStatus.ACTIVE, IotStatus.REVOKED},
    IotStatus.REVOKED: set(),
}


def check_transition(current: IotStatus, target: IotStatus) -> bool:
    """Whether an update is needed; raises for an illegal one (REVOKED is final)."""
    if current is target:
        return False
    if target not in _LEGAL[current]:
        raise PolicyViolation(
            "illegal-status-change",
            f"an IoT certificate cannot go from {current.value} to {target.value}"
            + (" (REVOKED is final)" if current is IotStatus.REVOKED else ""),
        )
    return True


def policy_document(partition: str, region: str, account: str) -> dict[str, Any]:
    """Least privilege: a device connects as its own thing name and uses only its own
    topics (``things/<thing>/...``), through the thing-name policy variable."""
    base = f"arn:{partition}:iot:{region}:{account}"
    thing = "${iot:Connection.Thing.ThingName}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": f"{base}:client/{thing}",
                "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
            },
            {
                "Effect": "Allow",
                "Action": ["iot:Publish", "iot:Receive"],
                "Resource": f"{base}:topic/{TOPIC_PREFIX}/{thing}/*",
            },
            {
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": f"{base}:topicfilter/{TOPIC_PREFIX}/{thing}/*",
            },
        ],
    }


# ---------------------------------------------------------------------------- client


@dataclass(frozen=True)
class Provisioned:
    thing: str
    serial_hex: str
    certificate_id: str
    certificate_arn: str
    thing_created: bool
    policy_created: bool
    with_ca: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "thing": self.thing,
            "serial": self.serial_hex,
            "certificate_id": self.certificate_id,
            "certificate_arn": self.certificate_arn,
            "thing_created": self.thing_created,
            "policy": POLICY_NAME,
            "policy_created": self.policy_created,
            "registered_with_ca": self.with_ca,
        }


def _client(service: str = "iot") -> Any:
    from pki.aws.client import make_client

    return make_client(service)


@contextmanager
def _aws(operation: str) -> Iterator[None]:
    """Turn every AWS failure into a BackendError naming what was being done."""
    from botocore.exceptions import BotoCoreError, ClientError

    from pki.aws.client import not_aws

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise BackendError(
            operation, BACKEND, f"{error.get('Code', 'error')}: {error.get('Message', exc)}"
        ) from None
    except BotoCoreError as exc:
        from pki.aws.client import invalid_parameters

        raise invalid_parameters(exc, operation) or BackendError(
            operation, BACKEND, str(exc)
        ) from None
    except Exception as exc:  # an answer that is not AWS's (ResponseParserError)
        unparsable = not_aws(exc, f"iot: {operation}")
        if unparsable is None:
            raise
        raise BackendError(operation, BACKEND, unparsable) from None


def _first_pem(pem: bytes) -> bytes:
    """The first certificate of a PEM chain (the issuing CA of ``chain.pem``)."""
    end = b"-----END CERTIFICATE-----"
    return pem.split(end, 1)[0] + end + b"\n"


class IotCore:
    """fleetpki's view of one IoT Core account and region, with its registrations."""

    def __init__(self, engine: Any, clock: Clock, client: Any = None) -> None:
        self.engine = engine
        self.clock = clock
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _client()
        return self._client

    # -- CA ------------------------------------------------------------------------------

    def register_ca(self, issuer: Issuer, actor: str) -> tuple[str, bool]:
        """Register the issuing CA (idempotent). Returns (certificate id, newly registered)."""
        from pki.issue.delivery import make_key_and_csr
        from pki.model import KeyType

        ca_pem = _first_pem(issuer.chain_pem)
        existing = store.ca_registration(self.engine)
        if existing is not None:
            with _aws("check the CA registration"):
                try:
                    self.client.describe_ca_certificate(certificateId=existing)
                    return existing, False
                except Exception as exc:
                    if error_code(exc) != "ResourceNotFoundException":
                        raise
        with _aws("get a registration code"):
            code = self.client.get_registration_code()["registrationCode"]
        _key, csr_pem = make_key_and_csr(KeyType.EC_P256, code)
        verification = issuer.issue(
            IssueRequest(profile="device", name=code, csr_pem=csr_pem, days=1, actor=actor)
        )
        with _aws("register the CA certificate"):
            response = self.client.register_ca_certificate(
                caCertificate=ca_pem.decode(),
                verificationCertificate=verification.cert_pem.decode(),
                setAsActive=True,
                allowAutoRegistration=False,
            )
        certificate_id = str(response["certificateId"])
        store.record_ca(self.engine, certificate_id, str(response["certificateArn"]), self.clock)
        # The verification certificate has done its job and its key is gone: retire it so it
        # is never listed as an active device certificate nor planned for rotation.
        from pki.model import RevocationReason
        from pki.revocation.revoke import revoke

        revoke(
            issuer.inventory,
            issuer.ca,
            self.clock,
            verification.record.serial,
            RevocationReason.CESSATION_OF_OPERATION,
            actor,
        )
        return certificate_id, True

    # -- provisioning -----------------------------------------------------------------------

    def provision(self, issued: IssuedCertificate) -> Provisioned:
        """Thing, certificate registration, policy and attachments for an issued device
        certificate. A failure rolls back what this call created on AWS and re-raises."""
        thing = issued.record.thing or issued.record.common_name
        undo: list[Callable[[], None]] = []
        try:
            result = self._provision(thing, issued, undo)
        except BaseException:
            for step in reversed(undo):
                try:
                    step()
                except Exception:  # noqa: S112 (best effort; the first error is what matters)
                    continue
            raise
        return result

    def _provision(
        self, thing: str, issued: IssuedCertificate, undo: list[Callable[[], None]]
    ) -> Provisioned:
        c = self.client
        thing_created = False
        with _aws(f"create thing {thing}"):
            try:
                c.describe_thing(thingName=thing)
            except Exception as exc:
                if error_code(exc) != "ResourceNotFoundException":
                    raise
                c.create_thing(thingName=thing)
                thing_created = True
                undo.append(lambda: c.delete_thing(thingName=thing))
        ca_id = store.ca_registration(self.engine)
        with _aws(f"register the certificate of {thing}"):
            if ca_id is not None:
                response = c.register_certificate(
                    certificatePem=issued.cert_pem.decode(),
                    caCertificatePem=_first_pem(issued.chain_pem).decode(),
                    status="ACTIVE",
                )
            else:
                response = c.register_certificate_without_ca(
                    certificatePem=issued.cert_pem.decode(), status="ACTIVE"
                )
        cert_id, cert_arn = str(response["certificateId"]), str(response["certificateArn"])

        def unregister() -> None:
            c.update_certificate(certificateId=cert_id, newStatus="INACTIVE")
            c.delete_certificate(certificateId=cert_id, forceDelete=True)

        undo.append(unregister)
        policy_created = self._ensure_policy()
        with _aws(f"attach the policy to the certificate of {thing}"):
            c.attach_policy(policyName=POLICY_NAME, target=cert_arn)
        undo.append(lambda: c.detach_policy(policyName=POLICY_NAME, target=cert_arn))
        with _aws(f"attach the certificate to thing {thing}"):
            c.attach_thing_principal(thingName=thing, principal=cert_arn)
        undo.append(lambda: c.detach_thing_principal(thingName=thing, principal=cert_arn))
        store.record_certificate(
            self.engine, issued.record.serial_hex, thing, cert_id, cert_arn, self.clock
        )
        return Provisioned(
            thing,
            issued.record.serial_hex,
            cert_id,
            cert_arn,
            thing_created,
            policy_created,
            ca_id is not None,
        )

    def _ensure_policy(self) -> bool:
        c = self.client
        with _aws(f"read policy {POLICY_NAME}"):
            try:
                c.get_policy(policyName=POLICY_NAME)
                return False
            except Exception as exc:
                if error_code(exc) != "ResourceNotFoundException":
                    raise
        region = c.meta.region_name
        with _aws("find the AWS account"):
            identity = _client("sts").get_caller_identity()
        partition = str(identity["Arn"]).split(":")[1]
        document = policy_document(partition, region, str(identity["Account"]))
        with _aws(f"create policy {POLICY_NAME}"):
            try:
                c.create_policy(policyName=POLICY_NAME, policyDocument=json.dumps(document))
            except Exception as exc:
                if error_code(exc) != "ResourceAlreadyExistsException":
                    raise  # lost a race with another provisioning run: reuse theirs
                return False
        return True

    # -- status ----------------------------------------------------------------------------

    def set_status(self, serial_hex: str, target: IotStatus) -> bool:
        """Change the IoT status of a registered certificate; False when already there."""
        row = store.certificate(self.engine, serial_hex)
        if row is None:
            raise NotFound(f"certificate {serial_hex} is not registered with IoT Core")
        if not check_transition(IotStatus(row.status), target):
            return False
        with _aws(f"set certificate {row.certificate_id} to {target.value}"):
            self.client.update_certificate(certificateId=row.certificate_id, newStatus=target.value)
        store.set_status(self.engine, serial_hex, target.value)
        return True

    def deprovision(self, thing: str) -> list[str]:
        """Deactivate (unless revoked), detach and delete the thing's certificates, then
        delete the thing. Returns the certificate ids removed."""
        from pki.errors import InvalidInput
        from pki.issue.policy import name_violation

        violation = name_violation("device", thing)
        if violation is not None:  # no such thing could have been provisioned
            raise InvalidInput(violation.message)
        c = self.client
        rows = store.certificates_of(self.engine, thing)
        with _aws(f"describe thing {thing}"):
            try:
                c.describe_thing(thingName=thing)
                exists = True
            except Exception as exc:
                if error_code(exc) != "ResourceNotFoundException":
                    raise
                exists = False
        if not exists and not rows:
            raise NotFound(f"thing {thing!r} is not provisioned in IoT Core")
        removed = []
        for row in rows:
            if row.status == IotStatus.ACTIVE.value:
                self.set_status(row.serial_hex, IotStatus.INACTIVE)
            with _aws(f"detach and delete certificate {row.certificate_id}"):
                if exists:
                    c.detach_thing_principal(thingName=thing, principal=row.certificate_arn)
                c.detach_policy(policyName=POLICY_NAME, target=row.certificate_arn)
                c.delete_certificate(certificateId=row.certificate_id)
            store.forget_certificate(self.engine, row.serial_hex)
            removed.append(row.certificate_id)
        if exists:
            with _aws(f"list the principals of {thing}"):
                left = c.list_thing_principals(thingName=thing).get("principals", [])
            if left:
                raise OperatorError(
                    f"thing {thing!r} still has certificates fleetpki did not register: "
                    + ", ".join(left)
                )
            with _aws(f"delete thing {thing}"):
                c.delete_thing(thingName=thing)
        return removed

    def endpoint(self) -> str:
        with _aws("describe the data endpoint"):
            return str(
                self.client.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
            )


def provision_many(
    iot: IotCore,
    issuer: Issuer,
    requests: Sequence[IssueRequest],
    deliver: Delivery,
    progress: Callable[[str, Exception | None], None] = lambda _t, _e: None,
    *,
    actor: str = "cli",
) -> tuple[list[Provisioned], list[Failure]]:
    """Issue every request as one batch, then provision each in IoT Core.

    A thing whose AWS steps fail is rolled back on AWS (its certificate stays issued and
    is reported; rerunning with --force provisions a fresh one) and the rest go on.
    """
    from pki.errors import FleetPkiError
    from pki.issue.results import Failure

    report = issuer.issue_batch(requests, deliver, actor=actor)
    failed: list[Failure] = list(report.failed)
    for failure in report.failed:
        progress(failure.name, failure.error)
    done: list[Provisioned] = []
    for issued in report.issued:
        thing = issued.record.thing or issued.record.common_name
        try:
            done.append(iot.provision(issued))
            progress(thing, None)
        except FleetPkiError as exc:
            note = f"{exc} (certificate {issued.record.serial_hex} issued, not registered)"
            failed.append(Failure(thing, FleetPkiError(note)))
            progress(thing, exc)
    return done, failed


def on_certificate_revoked(database_url: str, serial: int) -> bool:
    """The revocation hook's IoT part: REVOKED in IoT Core when fleetpki registered the
    certificate. Returns whether IoT Core was changed."""
    from pki.clock import SystemClock
    from pki.model import serial_hex

    engine = _hook_engine(database_url)
    if store.certificate(engine, serial_hex(serial)) is None:
        return False
    return IotCore(engine, SystemClock()).set_status(serial_hex(serial), IotStatus.REVOKED)


@functools.lru_cache(maxsize=4)
def _hook_engine(database_url: str) -> Any:
    """One engine per database for the revocation hook: a wave of superseded certificates
    calls it once per certificate."""
    from pki.storage import Inventory

    engine = Inventory.open(database_url).engine
    return engine
