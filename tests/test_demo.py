"""scripts/demo runs its story on the embedded defaults and shows every step."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        FLEETPKI_SKIP_SETUP="1",
        FLEETPKI_DEMO_DIR=str(tmp_path / "demo"),
        FLEETPKI_DEMO_DEVICES="3",
    )
    env.pop("FLEETPKI_HOME", None)
    result = subprocess.run(
        [str(ROOT / "scripts" / "demo")], capture_output=True, text=True, env=env, timeout=300
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for step in range(1, 16):
        assert f"## {step}. " in output
    assert "issued 3 device certificate(s)" in output
    assert "policy violation (weak-key)" in output
    assert "sensor-01: REFUSED (certificate revoked)" in output
    assert "sensor-02: OK" in output
    assert "provisioned pump-01" in output
    assert "checks: all passed" in output
    assert "stopped moto_server" in output and "mosquitto" in output
    assert "PRIVATE KEY" not in output
    assert (tmp_path / "demo" / "crl.pem").exists()
