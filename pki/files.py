"""Safe file writes: atomic (temp file + rename), mode set at creation, never half-written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from pki.errors import AlreadyExists, StorageError


def ensure_dir(path: Path, mode: int = 0o700) -> None:
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create directory {path}: {exc.strerror}") from None


def atomic_write(path: Path, data: bytes, mode: int = 0o644, *, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part.

    The temporary file is created with ``mode`` already set, so a private key is never
    readable by others, not even for an instant.
    """
    if not overwrite and path.exists():
        raise AlreadyExists(f"{path} already exists; refusing to overwrite it")
    directory = path.parent
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise StorageError(f"cannot write into {directory}: {exc.strerror}") from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp_name, path)
        else:
            os.link(tmp_name, path)  # fails if path appeared meanwhile
            os.unlink(tmp_name)
    except FileExistsError:
        _discard(tmp_name)
        raise AlreadyExists(f"{path} already exists; refusing to overwrite it") from None
    except OSError as exc:
        _discard(tmp_name)
        raise StorageError(f"cannot write {path}: {exc.strerror}") from None


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _discard(name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name)
