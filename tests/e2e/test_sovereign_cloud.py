"""A national cloud end to end: the simulator impersonates Azure Government (SIMULATOR_CLOUD=usgov) and refuses
public-cloud audiences, and the connector with AZURE_CLOUD=usgov runs a full `make run ONCE=1` cycle against it —
tokens for https://graph.microsoft.us, https://api.manage.microsoft.us/ and the usgov Key Vault resource, devices
enrolled, heartbeats sent, a threat report and an inventory.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from simulator import launch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def usgov(tmp_path_factory: pytest.TempPathFactory) -> Any:
    info, proc = launch.start(tmp_path_factory.mktemp("sim-usgov"), scenario="small", tenants=1, seed=7, cloud="usgov")
    try:
        yield info
    finally:
        launch.stop(proc)


def _token(info: dict[str, Any], tenant: str, scope: str) -> httpx.Response:
    connector = info["connector"]
    with httpx.Client(verify=ssl.create_default_context(cafile=info["ca_path"]), timeout=30) as client:
        return client.post(
            f"{info['authority']}/{tenant}/oauth2/v2.0/token",
            data={"grant_type": "client_credentials", "client_id": connector["client_id"],
                  "client_secret": connector["client_secret"], "scope": scope},
        )


def test_the_usgov_simulator_refuses_the_public_clouds_resources(usgov: dict[str, Any]) -> None:
    assert usgov["cloud"] == "usgov"
    assert usgov["intune_resource"] == "https://api.manage.microsoft.us/"
    tenant = usgov["tenants"][0]["tenant_id"]
    public = _token(usgov, tenant, "https://graph.microsoft.com/.default")
    assert public.status_code == 400 and "AADSTS500011" in public.text  # resource not found in this cloud
    granted = _token(usgov, tenant, "https://graph.microsoft.us/.default")
    assert granted.status_code == 200, granted.text
    with httpx.Client(verify=ssl.create_default_context(cafile=usgov["ca_path"]), timeout=30) as client:
        users = client.get(f"{usgov['graph_base_url']}/v1.0/users?$top=1",
                           headers={"Authorization": f"Bearer {granted.json()['access_token']}"})
        vault = client.get(f"{usgov['key_vault_url']}/secrets/x?api-version=7.5")
    assert users.status_code == 200, users.text
    assert 'resource="https://vault.usgovcloudapi.net"' in vault.headers["WWW-Authenticate"]


def test_full_cycle_with_azure_cloud_usgov(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("ONCE", "SCENARIO", "AZURE_CLOUD")}
    env["SIMULATOR_CLOUD"] = "usgov"
    proc = subprocess.run(
        [sys.executable, "scripts/run_stack.py", "--once", "--port", "0", "--state-dir", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "AZURE_CLOUD=usgov" in (tmp_path / "stack.env").read_text()
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["devices_expected"] > 0
    assert summary["devices_enrolled"] == summary["devices_expected"], summary
    assert summary["heartbeats_sent"] >= 1, summary
    assert summary["threat_reports_accepted"] >= 1, summary
    assert summary["inventories_fetched"] >= 1, summary
