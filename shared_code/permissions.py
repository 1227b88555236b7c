"""Every Microsoft Graph and Intune call the connector makes, declared once with its permission and purpose.

Code passes ``CALLS[name].permission`` (via :func:`call`) to the adapters, so a 403 is reported as
``permission_missing: <that permission>``. ``docs/permissions.md`` is generated from these declarations::

    python -m shared_code.permissions > docs/permissions.md

and a test fails when the file is stale. The enrollment feature declares its Graph calls in
``shared_code/enrollment/graph_calls.py`` (a ``CALLS`` tuple of :class:`~shared_code.api_call.ApiCall`); they are
merged here.

``SEED_TABLE`` reproduces the vendor permission table the project started from (Lookout MES, "Microsoft Permissions
used by MES Console Intune Integration"; reference/intune.md §6) so the generated document can show, row by row,
which of those calls we make and which calls we add beyond it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from shared_code.api_call import ApiCall
from shared_code.enrollment import graph_calls


@dataclass(frozen=True)
class SeedRow:
    """One row of the seed's permission table, as written there."""

    permission: str
    type: str
    api: str
    purpose: str


# The seed table, row by row (API text as the seed writes it; rows whose "API:" line the seed omits are noted).
SEED_TABLE: tuple[SeedRow, ...] = (
    SeedRow("User.Read", "Delegated", "GET /me",
            "MES Console single sign-on: retrieve user's group memberships for role-based access control"),
    SeedRow("DeviceManagementApps.Read.All", "Application", "GET /deviceAppManagement/managedAppRegistrations",
            "Intune MAM support: check if devices are enrolled in Intune MAM"),
    SeedRow("Device.Read.All", "Application", "GET /devices",
            "Enrollment polling: retrieve lists of devices to be enrolled"),
    SeedRow("Device.Read.All", "Application", "GET /devices/{id}",
            "Enrollment polling: retrieve individual devices to be enrolled or deactivated"),
    SeedRow("Device.Read.All", "Application", "GET /devices/delta",
            "Enrollment polling: find enrollment group IDs based on user-configured names (as the seed words it)"),
    SeedRow("GroupMember.Read.All", "Application", "GET /groups",
            "Enrollment polling: find enrollment group IDs based on user-configured names"),
    SeedRow("GroupMember.Read.All", "Application", "GET /groups/delta",
            "Enrollment polling: find groups with membership changes since last poll"),
    SeedRow("GroupMember.Read.All", "Application", "GET /groups/{id}/members (API line missing in the seed)",
            "Enrollment polling: retrieve group members to find users to enroll and identify subgroups"),
    SeedRow("User.Read.All", "Application", "GET /users",
            "Enrollment polling: retrieve a list of users to obtain their owned devices"),
    SeedRow("User.Read.All", "Application", "GET /users/{id | UPN}/ownedDevices",
            "Enrollment polling: retrieve a single user to obtain their owned devices"),
    SeedRow("Application.Read.All", "Application", "GET /servicePrincipals (API line missing in the seed)",
            "Intune discovery: find servicePrincipal for Intune"),
    SeedRow("Application.Read.All", "Application", "GET /servicePrincipals/{servicePrincipalId}/endpoints",
            "Intune discovery: find the URL to use for Intune API calls"),
    SeedRow("update_device_health", "Application", "GET /StatelessPartnerDeviceDataSyncService/DataUploadMessages",
            "App inventory: retrieve list of installed apps on device"),
    SeedRow("update_device_health", "Application", "PUT /StatelessPartnerDeviceDataSyncService/DataUploadMessages",
            "App inventory: initiate request for list of installed apps on device"),
    SeedRow("update_device_health", "Application", "PUT /StatelessPartnerTenantDataSyncService/PartnerTenantHeartbeat",
            "Tenant heartbeat: indicate to Intune that the connector is healthy"),
    SeedRow("update_device_health", "Application", "PUT /StatelessPartnerTenantDataSyncService/PartnerTenants",
            "Tenant provisioning: provision the tenant to use Stateless Partner Device Data Sync Service"),
)

INTUNE_ROLE = "update_device_health"

# Calls made by the Intune, MAM and SSO features (this module's owner). Enrollment's calls are merged in all_calls().
_OWN_CALLS: tuple[ApiCall, ...] = (
    ApiCall(
        name="graph.intune_service_principal",
        api="graph", method="GET", path="/servicePrincipals?$filter=appId eq '0000000a-0000-0000-c000-000000000000'",
        permission="Application.Read.All", type="application",
        purpose="Intune discovery: find the Intune service principal in the customer tenant",
        feature="intune", seed_api="GET /servicePrincipals (API line missing in the seed)",
    ),
    ApiCall(
        name="graph.service_principal_endpoints",
        api="graph", method="GET", path="/servicePrincipals/{id}/endpoints",
        permission="Application.Read.All", type="application",
        purpose="Intune discovery: read the partner tenant/device data-sync service URLs",
        feature="intune", seed_api="GET /servicePrincipals/{servicePrincipalId}/endpoints",
    ),
    ApiCall(
        name="graph.user_managed_app_registrations",
        api="graph", method="GET", path="/users/{id}/managedAppRegistrations",
        permission="DeviceManagementApps.Read.All", type="application",
        purpose=(
            "MAM check: one user's app protection registrations and whether a device has one. Used instead of the "
            "seed's tenant-wide list, whose userId $filter is undocumented: the user navigation reads only that "
            "user's registrations (same permission)"
        ),
        feature="mam", seed_api=None,
    ),
    ApiCall(
        name="graph.user_transitive_member_of",
        api="graph", method="GET", path="/users/{id}/transitiveMemberOf?$select=id",
        permission="User.Read.All", type="application",
        purpose=(
            "Console SSO: the transitive group ids of a console user whose sign-in token for the connector's API "
            "(scope Console.SignIn) was validated locally, mapped to console roles. App-only with the permission "
            "enrollment already needs (learn.microsoft.com/graph/api/user-list-transitivememberof: User.Read.All "
            "is least privileged for another user's memberships), instead of on-behalf-of, which would add the "
            "delegated User.Read to every customer's consent"
        ),
        feature="sso", seed_api=None,
    ),
    ApiCall(
        name="intune.partner_tenants",
        api="intune", method="PUT",
        path="/StatelessPartnerTenantDataSyncService/PartnerTenants(guid'{tenantId}')",
        permission=INTUNE_ROLE, type="application",
        purpose="Tenant provisioning (Provisioned=1) and deprovisioning (Provisioned=2) at Intune",
        feature="intune", seed_api="PUT /StatelessPartnerTenantDataSyncService/PartnerTenants",
    ),
    ApiCall(
        name="intune.partner_tenant_heartbeat",
        api="intune", method="PUT",
        path="/StatelessPartnerTenantDataSyncService/PartnerTenantHeartbeat(guid'{tenantId}')",
        permission=INTUNE_ROLE, type="application",
        purpose="Tenant heartbeat: tell Intune the connector is healthy (else it turns Unresponsive)",
        feature="heartbeat", seed_api="PUT /StatelessPartnerTenantDataSyncService/PartnerTenantHeartbeat",
    ),
    ApiCall(
        name="intune.upload_app_inventory_request",
        api="intune", method="PUT",
        path="/StatelessPartnerDeviceDataSyncService/DataUploadMessages(guid'{messageId}')",
        permission=INTUNE_ROLE, type="application",
        purpose="App inventory: request the list of installed apps on a device (App Sync)",
        feature="inventory", seed_api="PUT /StatelessPartnerDeviceDataSyncService/DataUploadMessages",
    ),
    ApiCall(
        name="intune.upload_threat_level",
        api="intune", method="PUT",
        path="/StatelessPartnerDeviceDataSyncService/DataUploadMessages(guid'{messageId}')",
        permission=INTUNE_ROLE, type="application",
        purpose="Device threat level: send secured/low/medium/high for a device (same API, purpose beyond the seed)",
        feature="threat", seed_api=None,
    ),
    ApiCall(
        name="intune.upload_result",
        api="intune", method="GET",
        path="/StatelessPartnerDeviceDataSyncService/DataUploadMessages(guid'{messageId}')",
        permission=INTUNE_ROLE, type="application",
        purpose="Upload results: poll a threat or App Sync message until Succeeded/Failed; returns the app list",
        feature="inventory", seed_api="GET /StatelessPartnerDeviceDataSyncService/DataUploadMessages",
    ),
)


def all_calls() -> dict[str, ApiCall]:
    """Every declared call by name (ours plus the enrollment feature's).

    Raises:
        ValueError: two declarations share a name.
    """
    result: dict[str, ApiCall] = {}
    for item in (*_OWN_CALLS, *graph_calls.CALLS):
        if item.name in result and result[item.name] != item:
            msg = f"call {item.name!r} is declared twice"
            raise ValueError(msg)
        result[item.name] = item
    return result


CALLS: dict[str, ApiCall] = {c.name: c for c in _OWN_CALLS}


def call(name: str) -> ApiCall:
    """The declaration of one of our calls (KeyError on a typo, so undeclared calls fail fast in tests)."""
    return CALLS[name]


def permission_set(calls: Iterable[ApiCall] | None = None) -> dict[str, set[str]]:
    """Permission → features that need it (what an admin grants)."""
    result: dict[str, set[str]] = {}
    for item in calls if calls is not None else all_calls().values():
        result.setdefault(item.permission, set()).add(item.feature)
    return result


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown() -> str:
    """The generated permissions document (docs/permissions.md)."""
    calls = sorted(all_calls().values(), key=lambda c: (c.api, c.permission, c.name))
    lines: list[str] = [
        "# Permissions",
        "",
        "<!-- Generated by `python -m shared_code.permissions > docs/permissions.md`; do not edit by hand. -->",
        "",
        "Every Microsoft Graph and Intune call the connector makes is declared once in code",
        "(`shared_code/permissions.py`, `shared_code/enrollment/graph_calls.py`) with its permission and purpose;",
        "this page is generated from those declarations and a test fails when it is stale. Every permission is an",
        "application permission granted by the customer's admin consent: the connector holds no delegated permission.",
        "",
        "## Console single sign-on",
        "",
        "The console sends an access token the user's tenant issued **for the connector's own API** with the",
        "delegated scope `Console.SignIn` (exposed by the connector's app registration, docs/deploy.md). The",
        "connector validates it locally (signature from that tenant's keys, `iss` = its v2 issuer, `tid` a",
        "provisioned customer tenant, `aud` = the API, `azp` in `CONSOLE_ALLOWED_CLIENT_IDS`, `scp` contains",
        "`Console.SignIn`, not app-only) and reads the user's groups app-only with",
        "`graph.user_transitive_member_of` (`User.Read.All`, already needed for enrollment). A Microsoft Graph token",
        "is never accepted as proof of sign-in: Graph accepts a `User.Read` token issued to any client app.",
        "The on-behalf-of flow was not chosen: it would add the delegated `User.Read` to every customer's consent",
        "and exchange the user's token with Entra, for the same group ids. So SSO adds no permission.",
        "",
        "## Permission set to grant",
        "",
        "| Permission | Type | Resource | Features that need it |",
        "|---|---|---|---|",
    ]
    seen: dict[tuple[str, str], set[str]] = {}
    for item in calls:
        seen.setdefault((item.permission, item.type), set()).add(item.feature)
    for (permission, kind), features in sorted(seen.items()):
        resource = "Microsoft Intune API" if permission == INTUNE_ROLE else "Microsoft Graph"
        lines.append(f"| `{permission}` | {kind} | {resource} | {', '.join(sorted(features))} |")
    lines += [
        "",
        "A missing permission shows up in `GET /api/tenants/{tenantId}` as `permission_missing: <permission>` on the",
        "affected feature only; the other features keep working.",
        "",
        "## Calls",
        "",
        "| Permission | Type | Call | Purpose | Code name | In the seed table |",
        "|---|---|---|---|---|---|",
    ]
    for item in calls:
        seed = "yes" if item.seed_api else "**added**"
        lines.append(
            f"| `{item.permission}` | {item.type} | `{item.method} {_cell(item.path)}` | {_cell(item.purpose)} "
            f"| `{item.name}` | {seed} |"
        )
    made_by: dict[str, list[str]] = {}
    for item in calls:
        if item.seed_api:
            made_by.setdefault(item.seed_api, []).append(item.name)
    lines += [
        "",
        "## The seed's table, row by row",
        "",
        "The permission table the project started from (Lookout MES, reference/intune.md §6), with the calls of ours",
        "that make each row's request.",
        "",
        "| Permission | Type | API | Purpose | Our call(s) |",
        "|---|---|---|---|---|",
    ]
    for row in SEED_TABLE:
        ours = ", ".join(f"`{n}`" for n in made_by.get(row.api, [])) or "not made"
        lines.append(f"| `{row.permission}` | {row.type} | `{_cell(row.api)}` | {_cell(row.purpose)} | {ours} |")
    added = [c for c in calls if not c.seed_api]
    lines += ["", "## Calls beyond the seed", ""]
    for item in added:
        lines.append(f"- `{item.name}` — `{item.method} {_cell(item.path)}` (`{item.permission}`, {item.type}): "
                     f"{item.purpose}.")
    if not added:
        lines.append("None.")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    """Print the generated document."""
    print(render_markdown(), end="")


if __name__ == "__main__":
    main()
