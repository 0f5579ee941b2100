"""The programs the stand-ins run: found on this machine, given a clean environment."""

from __future__ import annotations

import shutil
from pathlib import Path

from pki.childenv import child_env, faketime_only
from pki.errors import OperatorError


def need(command: str, package: str) -> str:
    found = shutil.which(command) or (
        f"/usr/sbin/{command}" if Path(f"/usr/sbin/{command}").exists() else None
    )
    if found is None:
        raise OperatorError(f"'{command}' is not installed; install the Debian package {package}")
    return found


def standin_env() -> dict[str, str]:
    """The stand-ins outlive 'dev up': they get none of fleetpki's secrets (the CA
    passphrase, AWS credentials), only what running them needs."""
    return child_env(keep=("PYTHONPATH", "VIRTUAL_ENV", "LD_LIBRARY_PATH")) | faketime_only()
