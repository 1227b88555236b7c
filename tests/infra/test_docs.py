"""docs/deploy.md stays in step with the generated permission set and walks the whole path."""

from __future__ import annotations

import re

from .conftest import ROOT

DEPLOY = ROOT / "docs" / "deploy.md"
PERMISSIONS = ROOT / "docs" / "permissions.md"


def _permission_set() -> list[tuple[str, str, str]]:
    """(permission, type, resource) rows of the "Permission set to grant" table in docs/permissions.md."""
    assert PERMISSIONS.exists(), "docs/permissions.md is missing: run python -m shared_code.permissions"
    text = PERMISSIONS.read_text()
    section = text.split("## Permission set to grant", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| (\w+) \| ([^|]+?) \|", section, flags=re.MULTILINE)
    assert rows, "no permission rows found in docs/permissions.md"
    return [(perm, kind, resource.strip()) for perm, kind, resource in rows]


def test_deploy_doc_lists_every_generated_permission() -> None:
    doc = DEPLOY.read_text()
    rows = re.findall(r"^\| [^|]+ \| `([^`]+)` \| (\w+) \|", doc, flags=re.MULTILINE)
    table = {perm: kind.lower() for perm, kind in rows}
    for perm, kind, _resource in _permission_set():
        assert table.get(perm) == kind.lower(), f"docs/deploy.md permission table: {perm} ({kind})"


def test_cli_walkthrough_adds_every_generated_permission() -> None:
    doc = DEPLOY.read_text()
    for perm, kind, resource in _permission_set():
        if resource == "Microsoft Intune API":
            assert f"role_id $INTUNE {perm}" in doc
        elif kind.lower() == "delegated":
            assert f"scope_id $GRAPH {perm}" in doc
        else:
            loop = re.search(r"for p in ([^;]+); do", doc)
            assert loop and perm in loop.group(1).split(), f"az CLI loop misses {perm}"


def test_deploy_doc_covers_the_path_from_zero() -> None:
    doc = DEPLOY.read_text()
    for needle in (
        "AzureADMultipleOrgs",  # multi-tenant registration
        "Console.Read",
        "Console.Manage",
        "https://login.microsoftonline.com/{customer-tenant-id-or-domain}/adminconsent?client_id={CONNECTOR_CLIENT_ID}",
        "azd up",
        "azd env set CONNECTOR_CLIENT_ID",
        "az keyvault secret set",
        "## 6. Rotating the credential",
        "## 7. Tearing down",
        "Purge protection caveat",
        "docs/permissions.md",
    ):
        assert needle in doc, needle
