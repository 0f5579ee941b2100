"""One error tree for fleetpki.

Every message is written for an operator: one line, naming the problem and,
where it helps, what to do. Operator errors exit 2, internal/backend failures 1.
No message ever includes private-key material or the CA passphrase.
"""

from __future__ import annotations


class FleetPkiError(Exception):
    """Root of every error fleetpki raises on purpose."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        # Subclasses take other constructor arguments; rebuild from state so errors
        # survive the trip back from a worker process.
        return (_restore, (type(self), self.message, dict(self.__dict__)))


def _restore(cls: type[FleetPkiError], message: str, state: dict[str, object]) -> FleetPkiError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class OperatorError(FleetPkiError):
    """The request cannot be served as given; the operator can fix it (exit 2)."""

    exit_code = 2


class InvalidInput(OperatorError):
    """Input that cannot be parsed or is out of range (malformed PEM, bad option...)."""


class PolicyViolation(OperatorError):
    """A well-formed request that the certificate policy refuses.

    ``reason`` is a stable machine-readable code (``weak-key``, ``san-not-allowed``...);
    the message explains it to a person.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __str__(self) -> str:
        return f"policy violation ({self.reason}): {self.message}"


class NotFound(OperatorError):
    """The named object (serial, thing, CA...) does not exist."""


class AlreadyExists(OperatorError):
    """Creating the object would overwrite an existing one."""


class WrongPassphrase(OperatorError):
    """The CA key could not be decrypted with the passphrase given."""


class BackendError(FleetPkiError):
    """A CA backend failed while doing ``operation``."""

    def __init__(self, operation: str, backend: str, cause: str) -> None:
        super().__init__(f"{backend} backend failed to {operation}: {cause}")
        self.operation = operation
        self.backend = backend
        self.cause = cause


class IssuedCertificateMismatch(BackendError):
    """The backend returned a certificate that does not match what was asked for."""


class InternalError(FleetPkiError):
    """A failure fleetpki did not foresee, carried out of a worker process (where the
    original exception may not survive pickling) as its type and first line."""

    def __init__(self, where: str, exc: BaseException) -> None:
        lines = str(exc).strip().splitlines()
        first = lines[0] if lines else ""
        super().__init__(f"internal error {where}: {type(exc).__name__}: {first}")


class StorageError(FleetPkiError):
    """The inventory or the file system failed (exit 1)."""


class DeliveryFailed(StorageError):
    """A certificate was recorded but its files could not be put in place; it was
    withdrawn (exit 1)."""


class BatchWorkerDied(FleetPkiError):
    """A forked batch worker died; what was committed before stays (exit 1)."""


class PublishError(FleetPkiError):
    """Publishing a bundle or a CRL failed (exit 1)."""


class LeaseLost(FleetPkiError):
    """A daemon found that its lease is another process's now (it was paused or cut off
    past its lease); it writes nothing more and stops (exit 1)."""
