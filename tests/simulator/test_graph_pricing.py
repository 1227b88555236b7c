"""RU prices per Graph's identity-and-access table (graph.md §1, throttling-limits)."""

from __future__ import annotations

import pytest

from simulator.pricing import is_write, price, route_label

G = "00000000-0000-0000-0000-000000000001"


@pytest.mark.parametrize(("method", "path", "query", "ru"), [
    ("GET", "/v1.0/users", "", 2),
    ("GET", "/v1.0/users", "$select=id", 1),
    ("GET", "/v1.0/users", "$select=id&$top=10", 1),              # floor 1
    ("GET", "/v1.0/users", "$expand=ownedDevices", 3),
    ("GET", "/v1.0/users", "$top=19", 1),
    ("GET", "/v1.0/users", "$top=20", 2),
    ("GET", "/v1.0/applications", "", 2),
    ("GET", f"/v1.0/users/{G}", "", 1),
    ("GET", f"/v1.0/groups/{G}/members", "", 3),
    ("GET", f"/v1.0/groups/{G}/members", "$select=id", 2),
    ("GET", f"/v1.0/groups/{G}/transitiveMembers", "", 5),
    ("GET", f"/v1.0/groups/{G}/transitiveMembers/microsoft.graph.user", "$count=true", 5),
    ("GET", "/v1.0/me/memberOf", "", 2),
    ("GET", f"/v1.0/users/{G}/transitiveMemberOf", "", 2),          # me/… costs apply to users/{id}/…
    ("GET", "/v1.0/me/ownedObjects", "", 2),
    ("POST", "/v1.0/me/checkMemberGroups", "", 4),
    ("POST", "/v1.0/directoryObjects/getByIds", "", 3),
    ("POST", f"/v1.0/users/{G}/getMemberObjects", "", 2),
    ("GET", f"/v1.0/servicePrincipals/{G}/appRoleAssignments", "", 2),
    ("GET", "/v1.0/devices", "", 1),
    ("GET", "/v1.0/devices", "$top=999&$select=id,deviceId", 1),
    ("GET", "/v1.0/groups/delta()", "$select=members", 1),
    ("GET", "/v1.0/devices/delta", "", 1),
    ("GET", f"/v1.0/servicePrincipals/{G}/endpoints", "", 1),
    ("PATCH", f"/v1.0/users/{G}", "", 1),
    ("GET", "/v1.0/deviceAppManagement/managedAppRegistrations", "", 0),  # Intune: not RU-metered
    ("POST", "/v1.0/$batch", "", 0),                                       # priced per inner request
])
def test_price_table(method: str, path: str, query: str, ru: int) -> None:
    assert price(method, path, query) == ru
    assert price(method, path.removeprefix("/v1.0"), query) == ru  # path with or without the version


def test_query_as_mapping_and_writes() -> None:
    assert price("GET", "/v1.0/users", {"$select": "id"}) == 1
    assert is_write("PATCH", f"/v1.0/users/{G}") and is_write("DELETE", f"/v1.0/groups/{G}")
    assert not is_write("POST", "/v1.0/me/checkMemberGroups") and not is_write("GET", "/v1.0/users")
    assert not is_write("POST", "/v1.0/$batch")


def test_route_labels() -> None:
    assert route_label(f"/v1.0/groups/{G}/members") == "/v1.0/groups/{id}/members"
    assert route_label("/v1.0/groups/delta()") == "/v1.0/groups/delta"
    assert route_label("/v1.0/users/ada@contoso.example/ownedDevices") == "/v1.0/users/{id}/ownedDevices"
    assert route_label("/v1.0/devices/$count") == "/v1.0/devices/$count"
