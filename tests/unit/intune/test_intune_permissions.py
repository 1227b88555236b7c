"""The permission declarations: one per call, the generated doc is fresh, code only uses declared calls."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from shared_code.permissions import SEED_TABLE, all_calls, permission_set, render_markdown

REPO = Path(__file__).resolve().parents[3]


def test_docs_permissions_md_is_generated_from_the_declarations() -> None:
    on_disk = (REPO / "docs" / "permissions.md").read_text()
    assert on_disk == render_markdown(), "docs/permissions.md is stale: python -m shared_code.permissions > docs/…"


def test_module_entry_point_prints_the_document() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "shared_code.permissions"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out == render_markdown()


def test_every_call_name_used_in_code_is_declared() -> None:
    declared = set(all_calls())
    used: set[str] = set()
    for path in (REPO / "shared_code").rglob("*.py"):
        used |= set(re.findall(r'\bcall\("([a-z_.]+)"\)', path.read_text()))
    assert used, "no call(...) uses found: the scan is broken"
    assert used <= declared, f"undeclared calls: {sorted(used - declared)}"


def test_seed_references_exist_and_every_seed_row_is_accounted_for() -> None:
    seed_apis = {row.api for row in SEED_TABLE}
    calls = all_calls().values()
    for item in calls:
        assert item.seed_api is None or item.seed_api in seed_apis, item.name
        assert item.type in ("application", "delegated")
        assert item.method in ("GET", "PUT", "POST", "PATCH", "DELETE")
    doc = render_markdown()
    for row in SEED_TABLE:
        assert row.purpose.replace("|", "\\|") in doc


def test_permission_set_is_least_privilege_and_matches_the_seed() -> None:
    granted = set(permission_set())
    seed_permissions = {row.permission for row in SEED_TABLE}
    # Never more than the seed asks for (the seed is the vendor-approved least-privilege set).
    assert granted <= seed_permissions, sorted(granted - seed_permissions)
    assert "update_device_health" in granted
    # SSO adds no permission: memberships are read app-only with User.Read.All, which enrollment needs anyway, and
    # the connector holds no delegated permission at all (issue 11 §1; no on-behalf-of).
    assert "User.Read" not in granted
    assert {c.type for c in all_calls().values()} == {"application"}
    sso = {c.permission for c in all_calls().values() if c.feature == "sso"}
    others = {c.permission for c in all_calls().values() if c.feature != "sso"}
    assert sso <= others, sorted(sso - others)
