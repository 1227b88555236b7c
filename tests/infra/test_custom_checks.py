"""The custom checkov checks in infra/checks fail a template that breaks their rule (and pass one that keeps it).

One checkov run over two small templates in a temp dir; infra/check.py separately proves every custom check
reports on the real templates.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pycep", reason="infra tests run in .venv-infra: make infra-check (bash infra/check.sh)")

from .conftest import INFRA

BAD = """
resource st 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: 'stbad'
  location: 'westeurope'
  kind: 'StorageV2'
  sku: { name: 'Standard_GRS' }
  properties: {
    allowSharedKeyAccess: true
    allowBlobPublicAccess: true
  }
}
resource appi 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-bad'
  location: 'westeurope'
  kind: 'web'
  properties: {
    Application_Type: 'web'
  }
}
resource kv 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: 'kv-bad'
  location: 'westeurope'
  properties: {
    tenantId: subscription().tenantId
    sku: { family: 'A', name: 'standard' }
    enableRbacAuthorization: false
  }
}
resource law 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-bad'
  location: 'westeurope'
  properties: {
    features: { disableLocalAuth: false }
  }
}
resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: 'func-bad'
  location: 'westeurope'
  kind: 'functionapp,linux'
  identity: { type: 'SystemAssigned' }
  properties: {
    siteConfig: {
      appSettings: [
        { name: 'AzureWebJobsStorage', value: 'DefaultEndpointsProtocol=https;AccountName=x;AccountKey=y' }
      ]
    }
  }
}
"""

GOOD = """
param enabled bool = true
resource st 'Microsoft.Storage/storageAccounts@2023-05-01' = if (enabled) {
  name: 'stgood'
  location: 'westeurope'
  kind: 'StorageV2'
  sku: { name: 'Standard_GRS' }
  properties: {
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
  }
}
resource appi 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-good'
  location: 'westeurope'
  kind: 'web'
  properties: {
    Application_Type: 'web'
    disableLocalAuth: true
  }
}
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], str]:
    """(file name, check id) -> PASSED/FAILED for the MTD checks on the two templates."""
    root = tmp_path_factory.mktemp("bicep")
    (root / "bad.bicep").write_text(BAD)
    (root / "good.bicep").write_text(GOOD)
    checkov = Path(sys.executable).parent / "checkov"
    ids = ",".join(f"CKV_MTD_{n}" for n in range(1, 8))
    proc = subprocess.run(
        [str(checkov), "-d", str(root), "--framework", "bicep", "--skip-download", "--external-checks-dir",
         str(INFRA / "checks"), "--check", ids, "-o", "json", "--compact"],
        capture_output=True, text=True, check=False, timeout=300,
    )
    report = json.loads(proc.stdout)
    out: dict[tuple[str, str], str] = {}
    for key, verdict in (("passed_checks", "PASSED"), ("failed_checks", "FAILED")):
        for rec in report["results"][key]:
            out[(Path(rec["file_path"]).name, rec["check_id"])] = verdict
    assert "Failed to run check" not in proc.stderr, proc.stderr[-2000:]
    return out


@pytest.mark.parametrize("check_id", [f"CKV_MTD_{n}" for n in range(1, 8)])
def test_bad_template_fails(results: dict[tuple[str, str], str], check_id: str) -> None:
    assert results.get(("bad.bicep", check_id)) == "FAILED"


@pytest.mark.parametrize("check_id", ["CKV_MTD_1", "CKV_MTD_2", "CKV_MTD_3"])
def test_good_template_passes_even_when_conditional_or_lowercase(
    results: dict[tuple[str, str], str], check_id: str
) -> None:
    # `if (enabled)` wraps the storage body; `disableLocalAuth` is the lowercase spelling of DisableLocalAuth.
    assert results.get(("good.bicep", check_id)) == "PASSED"
