"""IoT Core provisioning against a moto server on loopback."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conftest import Cli
from tests.helpers import load_cert, openssl_csr


def iot() -> Any:
    return boto3.client("iot")


def serial_of(cli: Cli, thing: str) -> str:
    return str(json.loads(cli.ok("list", "--thing", thing, "--json").out)[0]["serial"])


def test_provision_creates_thing_certificate_policy_and_attachments(
    cli: Cli, ca_home: Path, aws: str, tmp_path: Path
) -> None:
    _key, csr = openssl_csr(tmp_path, "pump-7")
    out = json.loads(
        cli.ok("iot", "provision", "pump-7", "--csr", csr, "--out", tmp_path / "p7", "--json").out
    )
    client = iot()
    assert client.describe_thing(thingName="pump-7")["thingName"] == "pump-7"
    described = client.describe_certificate(certificateId=out["certificate_id"])
    desc = described["certificateDescription"]
    assert desc["status"] == "ACTIVE"
    cert = load_cert(tmp_path / "p7" / "cert.pem")
    assert desc["certificatePem"].strip() == (tmp_path / "p7" / "cert.pem").read_text().strip()
    assert format(cert.serial_number, "x").zfill(len(out["serial"])) == out["serial"]
    principals = client.list_thing_principals(thingName="pump-7")["principals"]
    assert principals == [out["certificate_arn"]]
    policies = client.list_attached_policies(target=out["certificate_arn"])["policies"]
    assert [p["policyName"] for p in policies] == ["fleetpki-device"]
    document = json.loads(client.get_policy(policyName="fleetpki-device")["policyDocument"])
    resources = json.dumps(document)
    assert "client/${iot:Connection.Thing.ThingName}" in resources
    assert "topic/things/${iot:Connection.Thing.ThingName}/*" in resources
    assert "*" not in [s["Resource"] for s in document["Statement"]]
    assert out["registered_with_ca"] is False
    # a second thing reuses the policy
    second = json.loads(
        cli.ok(
            "iot", "provision", "pump-8", "--generate-key", "--out", tmp_path / "p8", "--json"
        ).out
    )
    assert second["policy_created"] is False
    assert (tmp_path / "p8" / "key.pem").stat().st_mode & 0o777 == 0o600


def test_register_ca_is_idempotent_and_then_used(
    cli: Cli, ca_home: Path, aws: str, tmp_path: Path
) -> None:
    first = json.loads(cli.ok("iot", "register-ca", "--json").out)
    again = json.loads(cli.ok("iot", "register-ca", "--json").out)
    assert first["registered"] is True
    assert again == {"certificate_id": first["certificate_id"], "registered": False}
    ca = iot().describe_ca_certificate(certificateId=first["certificate_id"])
    issuing = (ca_home / "ca" / "issuing.pem").read_text().strip()
    assert ca["certificateDescription"]["certificatePem"].strip() == issuing
    assert ca["certificateDescription"]["status"] == "ACTIVE"
    # the verification certificate (CN = registration code, key discarded) is retired
    assert json.loads(cli.ok("list", "--status", "active", "--json").out) == []
    retired = json.loads(cli.ok("list", "--status", "revoked", "--json").out)
    assert [r["revocation_reason"] for r in retired] == ["cessation-of-operation"]
    out = json.loads(
        cli.ok("iot", "provision", "fan-1", "--generate-key", "--out", tmp_path / "f", "--json").out
    )
    assert out["registered_with_ca"] is True


def test_revoke_sets_the_iot_certificate_to_revoked_and_revoked_is_final(
    cli: Cli, ca_home: Path, aws: str, tmp_path: Path
) -> None:
    out = json.loads(
        cli.ok(
            "iot", "provision", "valve-1", "--generate-key", "--out", tmp_path / "v", "--json"
        ).out
    )
    cli.ok("revoke", out["serial"], "--reason", "key-compromise")
    desc = iot().describe_certificate(certificateId=out["certificate_id"])
    assert desc["certificateDescription"]["status"] == "REVOKED"
    result = cli("iot", "set-status", out["serial"], "ACTIVE")
    assert result.code == 2
    assert "cannot go from REVOKED to ACTIVE (REVOKED is final)" in result.err
    desc = iot().describe_certificate(certificateId=out["certificate_id"])
    assert desc["certificateDescription"]["status"] == "REVOKED"


def test_revoking_an_unregistered_certificate_leaves_iot_alone(
    cli: Cli, ca_home: Path, aws: str, tmp_path: Path
) -> None:
    cli.ok("issue", "device", "plain-1", "--generate-key", "--out", tmp_path / "p")
    cli.ok("revoke", serial_of(cli, "plain-1"))
    assert iot().list_certificates()["certificates"] == []


def test_deprovision_deactivates_detaches_and_deletes(
    cli: Cli, ca_home: Path, aws: str, tmp_path: Path
) -> None:
    out = json.loads(
        cli.ok(
            "iot", "provision", "door-1", "--generate-key", "--out", tmp_path / "d", "--json"
        ).out
    )
    cli.ok("iot", "deprovision", "door-1")
    client = iot()
    assert client.list_things()["things"] == []
    assert client.list_certificates()["certificates"] == []
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.describe_certificate(certificateId=out["certificate_id"])
    again = cli("iot", "deprovision", "door-1")
    assert again.code == 2
    assert "thing 'door-1' is not provisioned in IoT Core" in again.err


def test_batch_provisioning_skips_bad_csrs(
    cli: Cli, ca_home: Path, aws: str, tmp_path: Path
) -> None:
    csrs = tmp_path / "csrs"
    csrs.mkdir()
    for name in ("b-1", "b-2", "b-3"):
        _key, csr = openssl_csr(tmp_path, name)
        csr.rename(csrs / f"{name}.csr")
    (csrs / "broken.csr").write_text("not a csr")
    result = cli("iot", "provision", "--batch", csrs, "--out", tmp_path / "out", "--json")
    assert result.code == 2
    data = json.loads(result.out)
    assert sorted(p["thing"] for p in data["provisioned"]) == ["b-1", "b-2", "b-3"]
    assert [f["thing"] for f in data["skipped"]] == ["broken"]
    assert "input is not a PEM certificate request" in data["skipped"][0]["error"]
    things = sorted(t["thingName"] for t in iot().list_things()["things"])
    assert things == ["b-1", "b-2", "b-3"]


def test_aws_failure_half_way_is_rolled_back(
    cli: Cli, ca_home: Path, aws: str, tmp_path: Path
) -> None:
    """The last AWS step fails (injected through botocore's own event hooks): the thing,
    the certificate registration and the policy attachment made before are undone."""
    from botocore.exceptions import ClientError

    from devices.iot import IotCore
    from pki.app import App
    from pki.clock import SystemClock
    from pki.errors import BackendError
    from pki.issue.delivery import make_key_and_csr
    from pki.model import IssueRequest, KeyType

    client = iot()

    def refuse(**_: Any) -> None:
        raise ClientError(
            {"Error": {"Code": "ThrottlingException", "Message": "slow down"}},
            "AttachThingPrincipal",
        )

    client.meta.events.register("before-call.iot.AttachThingPrincipal", refuse)
    state = App(home_path=ca_home, clock=SystemClock())
    try:
        _key, csr = make_key_and_csr(KeyType.EC_P256, "half-1")
        issued = state.issuer().issue(IssueRequest("device", "half-1", csr))
        core = IotCore(state.inventory().engine, state.clock, client=client)
        with pytest.raises(BackendError, match="ThrottlingException: slow down"):
            core.provision(issued)
    finally:
        state.close()
    check = iot()
    assert check.list_things()["things"] == []
    assert check.list_certificates()["certificates"] == []
    # the policy may stay (it is shared), but nothing is attached to it
    assert check.list_targets_for_policy(policyName="fleetpki-device")["targets"] == []
    # and a rerun from the CLI provisions the thing
    cli.ok("iot", "provision", "half-1", "--generate-key", "--out", tmp_path / "h")
    assert [t["thingName"] for t in check.list_things()["things"]] == ["half-1"]


def test_endpoint_prints_the_data_endpoint(cli: Cli, ca_home: Path, aws: str) -> None:
    out = cli.ok("iot", "endpoint").out.strip()
    assert out.endswith(".amazonaws.com")
    assert "-ats.iot." in out


@pytest.mark.parametrize("variable", ["AWS_REGION", "AWS_DEFAULT_REGION", None])
def test_the_region_comes_from_either_variable(
    cli: Cli, ca_home: Path, aws: str, monkeypatch: pytest.MonkeyPatch, variable: str | None
) -> None:
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)  # no profile region either
    if variable is None:
        result = cli("iot", "endpoint")
        assert (result.code, result.out) == (2, "")
        assert result.err == (
            "fleetpki: error: no AWS region configured; set AWS_REGION "
            "(or a profile with a region)\n"
        )
        return
    monkeypatch.setenv(variable, "eu-west-1")
    assert ".iot.eu-west-1.amazonaws.com" in cli.ok("iot", "endpoint").out


def test_a_thing_name_that_cannot_exist_is_refused_before_aws_is_asked(
    cli: Cli, ca_home: Path, aws: str
) -> None:
    result = cli("iot", "deprovision", "")
    assert (result.code, result.err) == (
        2,
        "fleetpki: error: thing name '' must be 1-128 characters of A-Z a-z 0-9 : _ -\n",
    )


def test_an_aws_parameter_botocore_refuses_is_an_operator_error() -> None:
    from botocore.exceptions import ParamValidationError

    from pki.aws.client import invalid_parameters

    exc = ParamValidationError(
        report="Invalid length for parameter thingName, value: 0,\nvalid min length: 1"
    )
    error = invalid_parameters(exc, "describe thing x")
    assert error is not None and error.exit_code == 2
    assert str(error) == (
        "describe thing x: invalid parameter: Invalid length for parameter thingName, "
        "value: 0, valid min length: 1"
    )
    assert invalid_parameters(ValueError("other"), "x") is None


def test_provision_with_bad_input_writes_nothing(
    cli: Cli, ca_home: Path, aws: str, tmp_path: Path
) -> None:
    result = cli("iot", "provision", "x-1", "--out", tmp_path / "x")
    assert result.code == 2
    assert result.err.strip() == "fleetpki: error: give exactly one of --csr FILE or --generate-key"
    bad = tmp_path / "bad.csr"
    bad.write_text("nope")
    result = cli("iot", "provision", "x-1", "--csr", bad, "--out", tmp_path / "x")
    assert result.code == 2
    assert not (tmp_path / "x").exists()
    assert iot().list_things()["things"] == []


def test_failed_provisioning_is_retried_with_force(
    cli: Cli, ca_home: Path, aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import devices.iot
    from pki.errors import BackendError

    real = devices.iot.IotCore.provision

    def fail_once(self: Any, issued: Any) -> Any:
        monkeypatch.setattr(devices.iot.IotCore, "provision", real)
        raise BackendError("attach the thing principal", "IoT Core", "ThrottlingException")

    monkeypatch.setattr(devices.iot.IotCore, "provision", fail_once)
    out = tmp_path / "retry"
    failed = cli("iot", "provision", "retry-1", "--generate-key", "--out", out)
    assert failed.code == 1
    assert "rerun with --force to retry" in failed.err
    assert (out / "cert.pem").exists()
    refused = cli("iot", "provision", "retry-1", "--generate-key", "--out", out)
    assert refused.code == 2 and "use --force" in refused.err
    cli.ok("iot", "provision", "retry-1", "--generate-key", "--out", out, "--force")
    assert [t["thingName"] for t in iot().list_things()["things"]] == ["retry-1"]
