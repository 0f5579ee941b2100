"""Files and processes that are not what they seem: FIFOs and devices as inputs, umask
000, a home others could swap, damaged CA keys, DSA CSRs, text before a CSR, a batch whose
parent is killed, temporary files of a process that is only a zombie."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from pki.issue.pending import _running, stale_temporaries
from tests.conftest import Cli
from tests.helpers import make_csr


@pytest.fixture
def ca(cli: Cli, home: Path) -> Path:
    cli.ok("ca", "init")
    return home


def _one_line(err: str) -> bool:
    return err.count("\n") == 1 and err.startswith("fleetpki: error:")


@pytest.mark.parametrize("kind", ["fifo", "zero"])
def test_a_passphrase_file_that_is_a_fifo_or_a_device_is_refused(
    cli: Cli, ca: Path, tmp_path: Path, kind: str
) -> None:
    passphrase = ca / "ca-passphrase"
    passphrase.unlink()
    if kind == "fifo":
        os.mkfifo(passphrase)
    else:
        passphrase.symlink_to("/dev/zero")
    result = cli("issue", "device", "f1", "--generate-key", "--out", tmp_path / "o")
    assert result.code in (1, 2) and _one_line(result.err), result.err
    assert "not a regular file" in result.err
    assert not (tmp_path / "o").exists()


def _modes(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode)
        for p in [root, *root.rglob("*")]
        if p.is_dir() or p.name.startswith(".") or "key" in p.name
    }


def test_umask_000_makes_nothing_writable_by_others(cli: Cli, tmp_path: Path) -> None:
    base = tmp_path / "u"
    base.mkdir(mode=0o755)
    batch = tmp_path / "csrs"
    batch.mkdir()
    (batch / "b1.csr").write_bytes(make_csr("b1")[0])
    old = os.umask(0)
    try:
        home = base / "a" / "b" / "home"
        cli.ok("--home", home, "ca", "init")
        cli.ok("--home", home, "issue", "device", "x", "--generate-key", "--out", base / "p" / "q")
        cli.ok("--home", home, "issue", "device", "--batch", batch, "--out", base / "r" / "out")
    finally:
        os.umask(old)
    modes = _modes(base)
    assert modes and all(not mode & 0o022 for mode in modes.values()), modes


def test_a_home_under_a_folder_everyone_can_write_is_refused(cli: Cli, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    refused = cli("--home", shared / "home", "ca", "init")
    assert refused.code == 2 and _one_line(refused.err) and "writable by every user" in refused.err
    assert not (shared / "home").exists()
    os.chmod(shared, 0o755)
    cli.ok("--home", shared / "home", "ca", "init")
    os.chmod(shared, 0o1777)  # sticky but not root's: still anybody's to rename in
    if os.getuid() != 0:
        assert cli("--home", shared / "home", "list").code == 2


@pytest.mark.parametrize("where", [0.3, 0.5, 0.7, 0.9])
def test_a_damaged_issuing_key_is_corrupt_not_a_wrong_passphrase(
    cli: Cli, ca: Path, tmp_path: Path, where: float
) -> None:
    key = ca / "ca" / "issuing.key.pem"
    lines = key.read_bytes().splitlines(keepends=True)
    n = max(1, min(len(lines) - 2, int(len(lines) * where)))
    lines[n] = bytes(reversed(lines[n].rstrip(b"\n"))) + b"\n"
    os.chmod(key, 0o600)
    key.write_bytes(b"".join(lines))
    result = cli("issue", "device", "c1", "--generate-key", "--out", tmp_path / "o")
    assert result.code == 1 and _one_line(result.err), result.err
    assert "corrupt" in result.err and "wrong passphrase" not in result.err


def test_a_dsa_csr_gets_one_line(cli: Cli, ca: Path, tmp_path: Path) -> None:
    with pytest.warns(CryptographyDeprecationWarning):
        key = dsa.generate_private_key(2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dsa1")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    (tmp_path / "dsa1.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    done = subprocess.run(
        [sys.executable, "-m", "pki", "issue", "device", "dsa1", "--csr", tmp_path / "dsa1.csr",
         "--out", tmp_path / "o"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and _one_line(done.stderr), done.stderr
    assert "unsupported-key" in done.stderr


def test_a_key_hidden_in_text_before_the_csr_is_refused(cli: Cli, ca: Path, tmp_path: Path) -> None:
    csr, key = make_csr("t1")
    der_key = key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    import base64

    hidden = b"Certificate Request:\n" + base64.encodebytes(der_key) + csr
    (tmp_path / "t1.csr").write_bytes(hidden)
    result = cli("issue", "device", "t1", "--csr", tmp_path / "t1.csr", "--out", tmp_path / "o")
    assert result.code == 2 and "data comes before the certificate request" in result.err
    dump = b"Certificate Request:\n    Data:\n        Version: 1 (0x0)\n" + csr
    (tmp_path / "t2.csr").write_bytes(dump)
    cli.ok("issue", "device", "t1", "--csr", tmp_path / "t2.csr", "--out", tmp_path / "o2")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def test_batch_workers_end_when_their_parent_is_killed(ca: Path, tmp_path: Path) -> None:
    batch = tmp_path / "csrs"
    batch.mkdir()
    for i in range(400):
        (batch / f"w{i:03d}.csr").write_bytes(make_csr(f"w{i:03d}")[0])
    parent = subprocess.Popen(
        [sys.executable, "-m", "pki", "issue", "device", "--batch", batch, "--out",
         tmp_path / "out", "--workers", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
        workers = _children(parent.pid)
        time.sleep(0.05)
    assert len(workers) >= 2, "the batch never forked its workers"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while any(_running(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [w for w in workers if _running(w)], "workers outlived their parent"


def test_a_zombies_temporary_files_are_stale_a_live_writers_are_not(tmp_path: Path) -> None:
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)  # exited, not reaped: a zombie
    live = os.getppid()
    (tmp_path / f".cert.pem.{zombie.pid}.abcd.tmp").write_bytes(b"x")
    (tmp_path / f".cert.pem.{live}.abcd.tmp").write_bytes(b"x")
    (tmp_path / ".unrelated.tmp").write_bytes(b"x")
    found = stale_temporaries([tmp_path])
    assert [p.name for p in found] == [f".cert.pem.{zombie.pid}.abcd.tmp"]
    zombie.wait()


def test_a_batch_run_again_removes_the_empty_folders_a_killed_one_left(
    cli: Cli, ca: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    for name in ("left1", "left2"):
        (out / name).mkdir(parents=True)
    (out / "kept").mkdir()
    (out / "kept" / "notes.txt").write_text("the operator's")
    batch = tmp_path / "csrs"
    batch.mkdir()
    (batch / "n1.csr").write_bytes(make_csr("n1")[0])
    cli.ok("issue", "device", "--batch", batch, "--out", out)
    assert sorted(p.name for p in out.iterdir()) == ["kept", "n1"]


def test_crl_out_refuses_to_replace_another_cas_crl(
    cli: Cli, ca: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    cli.ok("--home", other, "ca", "init")  # same default names, another key
    target = tmp_path / "served.crl"
    target.write_bytes((other / "crl" / "issuing.crl.pem").read_bytes())
    before = target.read_bytes()
    refused = cli("crl", "--out", target)
    assert refused.code == 2 and "holds a CRL of another CA" in refused.err
    assert target.read_bytes() == before


def test_a_placement_failing_half_way_puts_the_old_files_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pki.files
    from pki.errors import StorageError

    for name in ("key.pem", "cert.pem"):
        (tmp_path / name).write_bytes(b"old " + name.encode())
    staged = pki.files.stage_files(
        [(tmp_path / "key.pem", b"new key", 0o600), (tmp_path / "cert.pem", b"new cert", 0o644)],
        overwrite=True,
    )
    real = pki.files._place

    def failing(path: Path, tmp_name: str, overwrite: bool) -> None:
        if path.name == "cert.pem":
            raise StorageError("disk on fire")
        real(path, tmp_name, overwrite)

    monkeypatch.setattr(pki.files, "_place", failing)
    with pytest.raises(StorageError):
        pki.files.place_files(staged, overwrite=True)
    assert (tmp_path / "key.pem").read_bytes() == b"old key.pem"
    assert (tmp_path / "cert.pem").read_bytes() == b"old cert.pem"
    pki.files.discard_files(staged)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cert.pem", "key.pem"]


def test_a_placement_stopped_between_link_and_unlink_completes(tmp_path: Path) -> None:
    import pki.files

    staged = pki.files.stage_files([(tmp_path / "cert.pem", b"c", 0o644)], overwrite=False)
    os.link(staged[0].tmp, tmp_path / "cert.pem")  # where a kill -9 could stop it
    pki.files.place_files(staged, overwrite=False)
    assert [p.name for p in tmp_path.iterdir()] == ["cert.pem"]


def test_a_home_reached_through_a_link_in_a_shared_folder_is_refused(
    cli: Cli, tmp_path: Path
) -> None:
    real = tmp_path / "real"
    cli.ok("--home", real, "ca", "init")
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    (shared / "home").symlink_to(real)  # anyone could point this link elsewhere
    refused = cli("--home", shared / "home", "list")
    assert refused.code == 2 and "writable by every user" in refused.err
