"""Safe file writes: atomic (temp file + rename), mode set at creation, never half-written."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pki.errors import AlreadyExists, InvalidInput, StorageError

# What the operator fixes by naming another path or changing permissions (exit 2); any
# other failure of the file system (disk full, I/O error) is a storage failure (exit 1).
_PATH_ERRORS = frozenset(
    {
        errno.ENOENT,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENAMETOOLONG,
        errno.ELOOP,
        errno.EEXIST,
    }
)


def os_error(exc: OSError, message: str) -> InvalidInput | StorageError:
    """``message`` (which names the path) with the reason, as the right kind of error."""
    text = f"{message}: {exc.strerror or exc}"
    return InvalidInput(text) if exc.errno in _PATH_ERRORS else StorageError(text)


def ensure_dir(path: Path, mode: int = 0o700) -> None:
    """Create ``path`` and any missing folder above it with ``mode`` exactly, whatever
    the umask (under umask 000, ``mkdir -p`` would make them writable by everyone: another
    user could then swap what is inside). Folders that exist are left as they are."""
    missing: list[Path] = []
    probe = path
    while not probe.is_dir():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    try:
        for folder in reversed(missing):
            try:
                folder.mkdir(mode=mode)
            except FileExistsError:
                if not folder.is_dir():
                    raise
                continue
            os.chmod(folder, mode)  # mkdir's mode is filtered by the umask
    except OSError as exc:
        raise os_error(exc, f"cannot create directory {path}") from None


def refuse_shared_path(path: Path, what: str) -> None:
    """Refuse (exit 2) a ``path`` that another user could replace: it, or a folder above
    it, writable by others — except a root-owned sticky folder such as ``/tmp``, where
    nobody can rename what another user made."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):
        return  # what opening it says is clearer
    given = Path(os.path.abspath(path))  # a symlink on the way counts where it is, too
    for folder in dict.fromkeys((resolved, *resolved.parents, *given.parents)):
        try:
            info = folder.stat()
        except FileNotFoundError:
            continue  # made later, with an explicit mode
        except OSError:
            return
        if info.st_mode & stat.S_IWOTH and not (info.st_mode & stat.S_ISVTX and info.st_uid == 0):
            raise InvalidInput(
                f"{what} {path}: {folder} is writable by every user, who could swap it for "
                f"one of their own; use a folder only you can write to (chmod o-w {folder})"
            )


def check_writable_folder(folder: Path, what: str) -> None:
    """Refuse (exit 2), before any work is done, a ``folder`` files cannot be written into:
    its nearest existing ancestor must be a folder this process may write into."""
    probe = folder
    while True:
        try:
            info = probe.stat()
            break
        except FileNotFoundError:
            if probe.parent == probe:
                return
            probe = probe.parent
        except OSError as exc:
            raise os_error(exc, f"cannot use {what} {folder}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise InvalidInput(f"cannot use {what} {folder}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InvalidInput(f"cannot use {what} {folder}: {probe} is not writable")


def refuse_special(path: Path) -> None:
    """Refuse to replace a device (``/dev/full``), a pipe, a socket or a folder at ``path``:
    it would be swapped for a file, not written to. A regular file is replaced; so is a
    symlink (the link itself: the rename never writes through it)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise os_error(exc, f"cannot check {path}") from None
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)):
        raise InvalidInput(
            f"{path} is not a regular file; refusing to replace it (give a file path)"
        )


def read_regular(path: Path, limit: int, what: str) -> bytes:
    """At most ``limit`` bytes of the regular file ``path``, refused (``InvalidInput``) when
    there is more or when it is not a regular file: a FIFO would block forever, a device
    such as ``/dev/zero`` never ends (its size from ``stat`` says nothing). Opened without
    blocking, then checked on the open descriptor (no race with a swap). ``OSError`` from
    opening is left to the caller (``FileNotFoundError`` often means something)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"{what} {path} is not a regular file")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise InvalidInput(f"{what} {path} is over the {_size(limit)} limit")
    return data


def _size(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MiB" if limit >= 1024 * 1024 else f"{limit // 1024} KiB"


def read_limited(path: Path, limit: int, what: str) -> bytes:
    """An operator's input file, read as ``read_regular`` does, every failure one line."""
    try:
        return read_regular(path, limit, what)
    except OSError as exc:
        raise os_error(exc, f"cannot read {what} {path}") from None


def read_stdin(limit: int, what: str) -> bytes:
    """Standard input, up to ``limit`` bytes (refused beyond)."""
    import sys

    if sys.stdin is None or sys.stdin.isatty():
        raise InvalidInput(f"{what}: standard input is a terminal; pipe the file in")
    data = sys.stdin.buffer.read(limit + 1)
    if len(data) > limit:
        raise InvalidInput(f"{what} is over the {_size(limit)} limit")
    return data


def atomic_write(path: Path, data: bytes, mode: int = 0o644, *, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part.

    The temporary file is created with ``mode`` already set, so a private key is never
    readable by others, not even for an instant.
    """
    atomic_write_many([(path, data, mode)], overwrite=overwrite)


def atomic_write_many(
    files: Sequence[tuple[Path, bytes, int]], *, overwrite: bool = True
) -> list[Path]:
    """``atomic_write`` for many files at once, all or none: each is written under a
    temporary name, then all of them are fsynced (the file system can flush them together
    rather than one journal commit per write), then renamed into place. Returns the paths
    written; on a failure none of them is left behind."""
    staged = stage_files(files, overwrite=overwrite)
    try:
        place_files(staged, overwrite=overwrite)  # puts back what it placed if it fails
    except BaseException:
        discard_files(staged)
        raise
    return [item.final for item in staged]


@dataclass(frozen=True)
class StagedFile:
    """A file written and fsynced under a temporary name beside where it goes."""

    tmp: Path
    final: Path


TEMP_SUFFIX = ".tmp"


def temporary_writer(name: str) -> int | None:
    """The pid of the process that wrote the temporary file ``name`` (``.NAME.PID.XXXX.tmp``),
    None when ``name`` is not one of fleetpki's temporary files."""
    if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
        return None
    parts = name[: -len(TEMP_SUFFIX)].rsplit(".", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def stage_files(
    files: Sequence[tuple[Path, bytes, int]], *, overwrite: bool
) -> list[StagedFile]:
    """Write every file under a temporary name beside its place (mode set at creation),
    then fsync them all: nothing is visible under its real name yet. On a failure none
    of them is left behind."""
    staged: list[StagedFile] = []
    try:
        for path, data, mode in files:
            staged.append(StagedFile(Path(_stage(path, data, mode, overwrite)), path))
        for item in staged:
            _fsync(item.final, str(item.tmp))
    except BaseException:
        discard_files(staged)
        raise
    return staged


def place_files(
    staged: Sequence[StagedFile],
    *,
    overwrite: bool,
    after_first: Callable[[], None] | None = None,
) -> None:
    """Rename staged files into place: the rename is the delivery. The files of one
    folder are placed under a lock on that folder, so two runs placing into the same
    folder never mix their files (one's key with the other's certificate). A file whose
    temporary name is gone was placed already (a run that stopped half-way): placing
    again completes it. ``after_first`` runs once the first file is placed."""
    by_folder: dict[Path, list[StagedFile]] = {}
    for item in staged:
        by_folder.setdefault(item.final.parent, []).append(item)
    for folder, items in by_folder.items():
        with _folder_lock(folder):
            undo: list[tuple[Path, Path | None]] = []  # (placed, what it replaced, kept)
            try:
                for item in items:
                    if os.path.lexists(item.tmp):
                        kept = _keep_aside(item.final, overwrite)
                        try:
                            _place(item.final, str(item.tmp), overwrite)
                        except BaseException:
                            if kept is not None:
                                _discard(str(kept))
                            raise
                        undo.append((item.final, kept))
                    if after_first is not None:
                        after_first()
                        after_first = None
            except BaseException as exc:
                if isinstance(exc, Exception):  # a failure, not a stop: put back what was
                    _put_back(undo)
                raise
            for _, kept in undo:
                if kept is not None:
                    _discard(str(kept))


def _keep_aside(final: Path, overwrite: bool) -> Path | None:
    """A second name for the file about to be replaced, so that a placement failing half
    way can put it back (a hard link: no copy)."""
    if not overwrite or not os.path.lexists(final):
        return None
    aside = final.with_name(f".{final.name}.{os.getpid()}.{os.urandom(4).hex()}{TEMP_SUFFIX}")
    try:
        os.link(final, aside, follow_symlinks=False)
    except OSError:
        return None
    return aside


def _put_back(undo: list[tuple[Path, Path | None]]) -> None:
    for final, kept in reversed(undo):
        with contextlib.suppress(OSError):
            if kept is not None:
                os.replace(kept, final)
            else:
                final.unlink()


def discard_files(staged: Sequence[StagedFile]) -> None:
    for item in staged:
        _discard(str(item.tmp))


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    import fcntl

    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise os_error(exc, f"cannot open folder {folder}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _stage(path: Path, data: bytes, mode: int, overwrite: bool) -> str:
    if not overwrite and (path.exists() or path.is_symlink()):
        raise AlreadyExists(f"{path} already exists; refusing to overwrite it")
    refuse_special(path)
    directory = path.parent
    try:
        # the writer's pid in the name: a cleaner leaves a running writer's files alone
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=directory
        )
    except OSError as exc:
        raise os_error(exc, f"cannot write into {directory}") from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    except OSError as exc:
        _discard(tmp_name)
        raise os_error(exc, f"cannot write {path}") from None
    return tmp_name


def fsync_path(path: str | Path) -> None:
    """Flush a file or a folder (its entries) to disk; raises OSError."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync(path: Path, tmp_name: str) -> None:
    try:
        fsync_path(tmp_name)
    except OSError as exc:
        raise os_error(exc, f"cannot write {path}") from None


def _place(path: Path, tmp_name: str, overwrite: bool) -> None:
    try:
        if overwrite:
            os.replace(tmp_name, path)
        else:
            try:
                os.link(tmp_name, path)  # fails if path appeared meanwhile
            except FileExistsError:
                if not os.path.samefile(tmp_name, path):  # linked by a run that then stopped
                    raise
            os.unlink(tmp_name)
    except FileExistsError:
        raise AlreadyExists(f"{path} already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise os_error(exc, f"cannot write {path}") from None


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _discard(name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name)
