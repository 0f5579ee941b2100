"""nginx with ``ssl_verify_client on`` and ``ssl_crl`` = fleetpki's combined CRL file."""

from __future__ import annotations

import json
from pathlib import Path

from pki.processes import wait_until
from tests.interop.conftest import Pki, fleetpki
from tests.interop.relying import curl, nginx
from tests.processes import faketime_env


def test_nginx_accepts_a_valid_device_and_refuses_revoked_foreign_and_none(
    interop_pki: Pki, tmp_path: Path
) -> None:
    pki = interop_pki
    with nginx(tmp_path, pki) as server:
        status, body = curl(server.url, pki, pki.valid)
        assert (status, body) == (200, "hello CN=dev-valid")
        assert curl(server.url, pki, pki.revoked)[0] == 400
        assert curl(server.url, pki, pki.foreign)[0] == 400
        assert curl(server.url, pki, None)[0] == 400
        log = server.error_log()
        assert "client SSL certificate verify error: (23:certificate revoked)" in log
        assert "client sent no required SSL certificate" in log
        # the foreign device's chain ends at a root nginx does not trust
        assert log.count("client SSL certificate verify error") == 2
        # revoked now, in fleetpki: refused once nginx re-reads the CRL
        late = pki.device("dev-late")
        assert curl(server.url, pki, late)[0] == 200
        pki.revoke(late)
        server.reload()
        assert curl(server.url, pki, late)[0] == 400
        assert curl(server.url, pki, pki.valid)[0] == 200


def test_nginx_with_the_issuing_crl_alone_refuses_every_device(
    interop_pki: Pki, tmp_path: Path
) -> None:
    # the control for the test above: without the root's CRL, nginx cannot tell whether
    # the issuing CA is revoked and refuses everyone
    with nginx(tmp_path, interop_pki, crl=interop_pki.crl / "issuing.crl.pem") as server:
        assert curl(server.url, interop_pki, interop_pki.valid)[0] == 400
        assert "unable to get certificate CRL" in server.error_log()


def test_nginx_whose_clock_is_a_minute_behind_accepts_a_crl_signed_just_now(
    interop_pki: Pki, tmp_path: Path
) -> None:
    """thisUpdate is backdated (5 minutes, like notBefore): a relying party whose clock is
    60 s behind does not refuse every device for "CRL is not yet valid" after a re-sign."""
    pki = interop_pki
    config = pki.home / "config.json"
    settings = json.loads(config.read_text())
    with nginx(tmp_path, pki, env=faketime_env(seconds_behind=60)) as server:
        # the control: a CRL that is not backdated is "not yet valid" for this nginx
        config.write_text(json.dumps(settings | {"crl_backdate_seconds": 0}))
        fleetpki(pki.home, "crl", "--out", tmp_path / "now.crl")
        server.reload()
        assert curl(server.url, pki, pki.valid)[0] == 400
        wait_until(lambda: "CRL is not yet valid" in server.error_log(), what="nginx log")
        # the default: backdated thisUpdate, accepted at once
        config.write_text(json.dumps(settings))
        fleetpki(pki.home, "crl", "--out", tmp_path / "backdated.crl")
        server.reload()
        assert curl(server.url, pki, pki.valid)[0] == 200
        assert curl(server.url, pki, pki.revoked)[0] == 400
