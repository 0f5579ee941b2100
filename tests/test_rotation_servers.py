"""Server certificates kept current on disk: atomic swap of key and certificate, the reload
command, the superseded certificate revoked after the grace period, and real TLS
handshakes that see the new certificate."""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki.app import App
from pki.clock import FixedClock
from rotation import store
from rotation.planner import plan_inventory
from rotation.service import RotationService, RotationSettings
from tests.device_fixtures import fleetpki, ok

# far enough back that the clock can move past a renewal and the certificates are still
# valid for the real TLS handshakes
T0 = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)


def _served_serial(directory: Path, ca_root: Path) -> int:
    """Serve DIR/current over TLS for one handshake and return the serial the client saw."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(
        directory / "current" / "fullchain.pem", directory / "current" / "key.pem"
    )
    client = ssl.create_default_context(cafile=str(ca_root))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with server.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            client.wrap_socket(raw, server_hostname="api.example.test") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        thread.join(5)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def set_reload(home: Path, clock: FixedClock, command: list[str]) -> None:
    """Change the (only) target's reload command, as a later 'add --force' would."""
    engine = App(home, clock).inventory().engine
    with store.transaction(engine) as conn:
        row = conn.execute(store.server_targets.select()).first()
        assert row is not None
        spec = json.loads(row.spec)
        spec["reload_command"] = command
        conn.execute(store.server_targets.update().values(spec=json.dumps(spec)))


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, FixedClock, Path]:
    home = tmp_path / "home"
    clock = FixedClock(T0)
    ok(home, "ca", "init", clock=clock)
    return home, clock, tmp_path / "srv"


def test_add_installs_a_served_certificate_and_refuses_a_second_time(
    setup: tuple[Path, FixedClock, Path],
) -> None:
    home, clock, folder = setup
    marker = folder.parent / "reloaded"
    out = ok(home, "rotation", "server", "add", "api.example.test", "--dir", folder, "--ip",
             "127.0.0.1", "--days", "90", "--reload-command", f"touch {marker}", "--json",
             clock=clock)  # fmt: skip
    placed = json.loads(out)
    assert marker.exists()  # the reload command ran
    current = folder / "current"
    assert current.is_symlink() and current.resolve().name == placed["serial"]
    key_file = current / "key.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate((current / "cert.pem").read_bytes())
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    assert cert.public_key() == key.public_key()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["api.example.test"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert _served_serial(folder, home / "ca" / "root.pem") == cert.serial_number
    code, _out, err = fleetpki(home, "rotation", "server", "add", "api.example.test", "--dir",
                               folder, clock=clock)  # fmt: skip
    assert code == 2
    assert "exists; --force replaces it" in err
    listed = json.loads(ok(home, "rotation", "server", "list", "--json"))
    assert [t["name"] for t in listed] == ["api.example.test"]


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["bad name!"], "policy violation (invalid-dns-name)"),
        (["api.example.test", "--reload-command", "no-such-binary-xyz"], "not an executable"),
        (["api.example.test", "--ip", "300.1.1.1"], "does not appear to be an IPv4"),
    ],
)
def test_bad_targets_are_refused_and_nothing_is_written(
    setup: tuple[Path, FixedClock, Path], args: list[str], problem: str
) -> None:
    home, clock, folder = setup
    code, _out, err = fleetpki(home, "rotation", "server", "add", *args, "--dir", folder,
                               clock=clock)  # fmt: skip
    assert code == 2, err
    assert problem in err
    assert not folder.exists()
    assert json.loads(ok(home, "rotation", "server", "list", "--json")) == []


def test_a_dir_that_cannot_be_used_is_refused_before_anything_is_issued(
    setup: tuple[Path, FixedClock, Path],
) -> None:
    home, clock, folder = setup
    folder.parent.mkdir(parents=True, exist_ok=True)
    blocker = folder.parent / "a-file"
    blocker.write_text("not a folder")

    def snapshot() -> tuple[str, str]:
        return ok(home, "list", "--json", "--status", "revoked"), ok(home, "audit", "--json")

    before = snapshot()
    code, _out, err = fleetpki(home, "rotation", "server", "add", "api.example.test", "--dir",
                               blocker / "sub", clock=clock)  # fmt: skip
    assert code == 2, err
    assert err.startswith(f"fleetpki: error: cannot use --dir {blocker / 'sub'}: ")
    # nothing issued (and so nothing revoked either)
    assert snapshot() == before


def test_a_due_server_certificate_is_replaced_reloaded_and_the_old_one_revoked(
    setup: tuple[Path, FixedClock, Path],
) -> None:
    home, clock, folder = setup
    marker = folder.parent / "reloads"
    placed = json.loads(ok(home, "rotation", "server", "add", "api.example.test", "--dir",
                           folder, "--days", "30", "--reload-command",
                           f"sh -c 'echo x >> {marker}'", "--json", clock=clock))  # fmt: skip
    old_serial = placed["serial"]
    state = App(home, clock)
    service = RotationService(
        home=state.home,
        inventory=state.inventory(),
        issuer=state.issuer(),
        sender=None,  # servers only: nothing is sent to devices
        clock=clock,
        settings=RotationSettings(grace=dt.timedelta(hours=1)),
    )
    # not due yet: nothing happens
    assert service.rotate_servers(plan_inventory(state.inventory(), clock.now())) == []
    clock.advance(dt.timedelta(days=22))  # past 2/3 of 30 days (+ at most 5 % jitter)
    items = plan_inventory(state.inventory(), clock.now())
    (rotation,) = service.rotate_servers(items)
    assert rotation.state is store.State.CONFIRMED
    assert rotation.old_serial == old_serial
    current = (folder / "current").resolve()
    assert current.name == rotation.new_serial != old_serial
    assert (folder / "versions" / old_serial).is_dir()  # kept for rollback
    assert marker.read_text().count("x") == 2  # add, then the replacement
    new_cert = x509.load_pem_x509_certificate((current / "cert.pem").read_bytes())
    assert _served_serial(folder, home / "ca" / "root.pem") == new_cert.serial_number
    lifetime = new_cert.not_valid_after_utc - new_cert.not_valid_before_utc
    assert dt.timedelta(days=30) <= lifetime <= dt.timedelta(days=30, minutes=6)
    # the old one stays valid through the grace period, then is revoked as superseded
    assert service.sweep().completed == []
    clock.advance(dt.timedelta(hours=1, seconds=1))
    assert [r.id for r in service.sweep().completed] == [rotation.id]
    old = state.inventory().get(int(old_serial, 16))
    assert old.status.value == "revoked"
    assert old.revocation_reason is not None and old.revocation_reason.value == "superseded"
    listed = json.loads(ok(home, "rotation", "server", "list", "--json"))
    assert listed[0]["serial"] == rotation.new_serial


def test_a_failing_reload_keeps_the_old_certificate_valid(
    setup: tuple[Path, FixedClock, Path],
) -> None:
    home, clock, folder = setup
    placed = json.loads(ok(home, "rotation", "server", "add", "api.example.test", "--dir",
                           folder, "--json", clock=clock))  # fmt: skip
    # make the reload fail from now on
    set_reload(home, clock, ["sh", "-c", "echo cannot reload >&2; exit 3"])
    code, _out, err = fleetpki(home, "rotation", "server", "rotate", "api.example.test",
                               "--grace", "0", clock=clock)  # fmt: skip
    assert code == 1
    assert "exited 3: cannot reload" in err
    serials = {r["serial"]: r["status"] for r in json.loads(ok(home, "list", "--json"))}
    assert serials[placed["serial"]] == "active"  # not revoked: the server may still use it
    assert (folder / "current").resolve().name != placed["serial"]  # the new one is in place
    status = json.loads(ok(home, "rotation", "status", "--json"))
    assert "exited 3" in status["recent_failures"][0]["error"]


def test_a_second_rotate_in_the_grace_period_says_why_and_a_fixed_reload_is_retried(
    setup: tuple[Path, FixedClock, Path],
) -> None:
    home, clock, folder = setup
    ok(home, "rotation", "server", "add", "api.example.test", "--dir", folder, clock=clock)
    ok(home, "rotation", "server", "rotate", "api.example.test", clock=clock)  # 1 h of grace
    code, _out, err = fleetpki(home, "rotation", "server", "rotate", "api.example.test",
                               clock=clock)  # fmt: skip
    assert code == 2
    assert "has a rotation in progress (confirmed" in err
    # a reload that fails, then works: the daemon's next pass reloads and goes on
    clock.advance(dt.timedelta(hours=2))
    set_reload(home, clock, ["false"])
    code, _out, err = fleetpki(home, "rotation", "server", "rotate", "api.example.test",
                               clock=clock)  # fmt: skip
    assert code == 1
    assert "false exited 1" in err
    marker = folder.parent / "reloaded-now"
    set_reload(home, clock, ["touch", str(marker)])
    state = App(home, clock)
    service = RotationService(home=state.home, inventory=state.inventory(),
                              issuer=state.issuer(), sender=None, clock=clock)  # fmt: skip
    assert service.rotate_servers([]) == []  # nothing due, but the reload is run again
    assert marker.exists()
    status = json.loads(ok(home, "rotation", "status", "--json"))
    assert status["states"]["confirmed"] == 1 and status["states"]["failed"] == 0


def test_group_makes_the_key_readable_by_a_server_that_drops_privileges(
    setup: tuple[Path, FixedClock, Path],
) -> None:
    import grp
    import os

    home, clock, folder = setup
    group = grp.getgrgid(os.getgid()).gr_name
    placed = json.loads(ok(home, "rotation", "server", "add", "api.example.test", "--dir",
                           folder, "--group", group, "--json", clock=clock))  # fmt: skip
    key = folder / "versions" / placed["serial"] / "key.pem"
    assert key.stat().st_mode & 0o777 == 0o640
    assert key.stat().st_gid == os.getgid()
    assert (folder / "versions").stat().st_mode & 0o777 == 0o750
    code, _out, err = fleetpki(home, "rotation", "server", "add", "other.example.test", "--dir",
                               folder.parent / "other", "--group", "no-such-group-xyz",
                               clock=clock)  # fmt: skip
    assert code == 2
    assert "no group 'no-such-group-xyz'" in err
    assert not (folder.parent / "other").exists()


def _service(home: Path, clock: FixedClock, grace: dt.timedelta) -> RotationService:
    state = App(home, clock)
    return RotationService(home=state.home, inventory=state.inventory(), issuer=state.issuer(),
                           sender=None, clock=clock,
                           settings=RotationSettings(grace=grace))  # fmt: skip


def _statuses(home: Path) -> dict[str, str]:
    return {r["serial"]: r["status"] for r in json.loads(ok(home, "list", "--json"))}


def test_an_install_that_fails_changes_nothing_and_withdraws_the_new_certificate(
    setup: tuple[Path, FixedClock, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pki.errors import StorageError
    from rotation import servers

    home, clock, folder = setup
    placed = json.loads(ok(home, "rotation", "server", "add", "api.example.test", "--dir",
                           folder, "--json", clock=clock))  # fmt: skip

    def full(*_a: object, **_k: object) -> None:
        raise StorageError("cannot install into versions/x: No space left on device")

    monkeypatch.setattr(servers, "install", full)
    (rotation,) = _service(home, clock, dt.timedelta(0)).rotate_servers(
        [], names=["api.example.test"]
    )
    assert rotation.state is store.State.FAILED
    assert (folder / "current").resolve().name == placed["serial"]
    listed = json.loads(ok(home, "rotation", "server", "list", "--json"))
    assert listed[0]["serial"] == placed["serial"]
    statuses = _statuses(home)
    assert statuses.pop(placed["serial"]) == "active"
    assert list(statuses.values()) == ["revoked"]  # the one that could not be installed


def test_after_two_failed_reloads_the_first_certificate_is_superseded_too(
    setup: tuple[Path, FixedClock, Path],
) -> None:
    home, clock, folder = setup
    first = json.loads(ok(home, "rotation", "server", "add", "api.example.test", "--dir",
                          folder, "--json", clock=clock))  # fmt: skip
    set_reload(home, clock, ["false"])
    service = _service(home, clock, dt.timedelta(0))
    (r1,) = service.rotate_servers([], names=["api.example.test"])
    (r2,) = service.rotate_servers([], names=["api.example.test"])
    assert r1.state is r2.state is store.State.FAILED
    set_reload(home, clock, ["true"])
    service.rotate_servers([])  # the reload is retried, and works
    assert [r.id for r in service.sweep().completed] == [r2.id]
    statuses = _statuses(home)
    assert statuses[r2.new_serial or ""] == "active"
    assert statuses[first["serial"]] == "revoked"
    assert statuses[r1.new_serial or ""] == "revoked"
    assert list(statuses.values()).count("active") == 1


def test_a_rotation_interrupted_after_the_swap_is_finished_from_what_is_on_disk(
    setup: tuple[Path, FixedClock, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rotation import servers

    home, clock, folder = setup
    ok(home, "rotation", "server", "add", "api.example.test", "--dir", folder, clock=clock)
    service = _service(home, clock, dt.timedelta(0))
    real = servers.reload

    def crash(_target: object) -> None:
        raise SystemExit("killed between the swap and the reload")

    monkeypatch.setattr(servers, "reload", crash)
    with pytest.raises(SystemExit):
        service.rotate_servers([], names=["api.example.test"])
    monkeypatch.setattr(servers, "reload", real)
    installed = (folder / "current").resolve().name
    clock.advance(dt.timedelta(minutes=16))
    service.sweep()  # the new certificate is in place: a reload is owed, not a withdrawal
    assert _statuses(home)[installed] == "active"
    service.rotate_servers([])  # the owed reload runs; the rotation goes on
    assert len(service.sweep().completed) == 1
    statuses = _statuses(home)
    assert statuses[installed] == "active"
    assert list(statuses.values()).count("active") == 1
