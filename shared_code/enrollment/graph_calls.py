"""Every Microsoft Graph call the enrollment poller makes, with its permission and purpose.

``shared_code/permissions.py`` merges ``CALLS`` into the generated ``docs/permissions.md``; the reader passes
``CALLS_BY_NAME[name].permission`` to the Graph client so a 403 is reported as ``permission_missing: <that>``.
"""

from __future__ import annotations

from shared_code.api_call import ApiCall

_E = "enrollment"

CALLS: tuple[ApiCall, ...] = (
    ApiCall(
        name="graph.groups_by_name", api="graph", method="GET",
        path="/groups?$filter=displayName eq '{name}'&$select=id,displayName",
        permission="GroupMember.Read.All", type="application",
        purpose="Enrollment scope: resolve each configured enrollment group name to its id (quotes doubled)",
        feature=_E, seed_api="GET /groups",
    ),
    ApiCall(
        name="graph.groups_delta", api="graph", method="GET", path="/groups/delta?$select=displayName,members",
        permission="GroupMember.Read.All", type="application",
        purpose="Enrollment scope: a round started with $deltatoken=latest at each full reconcile (a cursor without "
        "data), then membership/name changes of every group since the last poll",
        feature=_E, seed_api="GET /groups/delta",
    ),
    ApiCall(
        name="graph.group_members", api="graph", method="GET", path="/groups/{id}/members?$select=id&$top=999",
        permission="GroupMember.Read.All", type="application",
        purpose="Enrollment scope: direct members of the enrollment groups and of the groups nested in them (at a "
        "full reconcile, and when a group enters scope later)",
        feature=_E, seed_api=None,
    ),
    ApiCall(
        name="graph.devices_delta", api="graph", method="GET",
        path="/devices/delta?$select=id,deviceId,displayName,operatingSystem,operatingSystemVersion,trustType,"
        "isManaged,isCompliant,accountEnabled",
        permission="Device.Read.All", type="application",
        purpose="Enrollment polling: devices created, deleted or changed (platform, version) since the last poll",
        feature=_E, seed_api="GET /devices/delta",
    ),
    ApiCall(
        name="graph.devices_with_owners", api="graph", method="GET",
        path="/devices?$select=...&$expand=registeredOwners",
        permission="Device.Read.All", type="application",
        purpose="Full reconcile (small tenants): devices with their registered owner in one list (100 per page)",
        feature=_E, seed_api="GET /devices",
    ),
    ApiCall(
        name="graph.users_with_owned_devices", api="graph", method="GET",
        path="/users?$select=id,accountEnabled&$expand=ownedDevices",
        permission="User.Read.All", type="application",
        purpose="Full reconcile (large tenants): each user's owned devices in bulk (100 users per page, 20 devices "
        "each); Device.Read.All lets the expanded devices carry their properties",
        feature=_E, seed_api="GET /users",
    ),
    ApiCall(
        name="graph.user_owned_devices", api="graph", method="GET", path="/users/{id}/ownedDevices",
        permission="User.Read.All", type="application",
        purpose="Owned devices of users who entered scope, of users past the 20-device $expand cap, or of a tiny "
        "scope in a huge tenant (batched 20 per $batch)",
        feature=_E, seed_api="GET /users/{id | UPN}/ownedDevices",
    ),
    ApiCall(
        name="graph.device_with_owner", api="graph", method="GET",
        path="/devices/{id}?$select=...&$expand=registeredOwners",
        permission="Device.Read.All", type="application",
        purpose="Incremental polls: owner and properties of a device that appeared or changed platform, or was "
        "added to an enrollment group directly (batched 20 per $batch)",
        feature=_E, seed_api="GET /devices/{id}",
    ),
    ApiCall(
        name="graph.user_member_of", api="graph", method="GET", path="/users/{id}/transitiveMemberOf?$select=id",
        permission="User.Read.All", type="application",
        purpose="Re-verification: is the owner of a device about to be deactivated (or staged) still in an "
        "enrollment group? A second, independent read before anything is deactivated (batched 20 per $batch)",
        feature=_E, seed_api=None,
    ),
    ApiCall(
        name="graph.device_member_of", api="graph", method="GET",
        path="/devices/{id}/transitiveMemberOf?$select=id",
        permission="Device.Read.All", type="application",
        purpose="Re-verification: is a device that is a member of an enrollment group itself, and about to be "
        "deactivated (or staged), still in one? (batched 20 per $batch)",
        feature=_E, seed_api=None,
    ),
    ApiCall(
        name="graph.object_counts", api="graph", method="GET", path="/users/$count, /devices/$count",
        permission="User.Read.All", type="application",
        purpose="Cost estimate: tenant shape (users, devices) before the first full reconcile picks a strategy "
        "(ConsistencyLevel: eventual; /devices/$count needs Device.Read.All)",
        feature=_E, seed_api=None,
    ),
    ApiCall(
        name="graph.disabled_users", api="graph", method="GET",
        path="/users?$filter=accountEnabled eq false&$select=id&$top=999",
        permission="User.Read.All", type="application",
        purpose="Only for tenants configured not to keep disabled users enrolled: which owners are disabled",
        feature=_E, seed_api="GET /users",
    ),
)

CALLS_BY_NAME: dict[str, ApiCall] = {c.name: c for c in CALLS}


def permission(name: str) -> str:
    """The declared permission of a call (KeyError on a typo)."""
    return CALLS_BY_NAME[name].permission
