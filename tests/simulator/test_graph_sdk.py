"""The real msgraph-sdk (GraphServiceClient + kiota auth) against the simulator over HTTPS: paging and groups delta."""

from __future__ import annotations

import ssl
from typing import Any

import httpx
import pytest
from azure.identity.aio import ClientSecretCredential
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_authentication_azure.azure_identity_authentication_provider import AzureIdentityAuthenticationProvider
from msgraph import GraphRequestAdapter, GraphServiceClient
from msgraph.generated.groups.delta.delta_request_builder import DeltaRequestBuilder
from msgraph.generated.users.users_request_builder import UsersRequestBuilder
from msgraph_core import GraphClientFactory

from tests.simulator.conftest import SimHandle


async def _client(sim: SimHandle, tenant_id: str) -> tuple[GraphServiceClient, ClientSecretCredential,
                                                          httpx.AsyncClient]:
    info = sim.info
    cred = ClientSecretCredential(tenant_id, info["connector"]["client_id"], info["connector"]["client_secret"],
                                  authority=info["authority"], disable_instance_discovery=True,
                                  connection_verify=info["ca_path"])
    auth = AzureIdentityAuthenticationProvider(cred, scopes=["https://graph.microsoft.com/.default"],
                                               allowed_hosts=["localhost"])
    http = GraphClientFactory.create_with_default_middleware(
        client=httpx.AsyncClient(verify=ssl.create_default_context(cafile=info["ca_path"]), timeout=30))
    adapter = GraphRequestAdapter(auth, client=http)
    adapter.base_url = f"{info['graph_base_url']}/v1.0"
    return GraphServiceClient(request_adapter=adapter), cred, http


@pytest.fixture(scope="module")
def tenant(sim: SimHandle) -> dict[str, Any]:
    r = sim.admin("POST", "/_sim/tenants", {"scenario": "small", "seed": 4242})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_sdk_users_paging(sim: SimHandle, tenant: dict[str, Any]) -> None:
    client, cred, http = await _client(sim, tenant["tenant_id"])
    try:
        q = UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(top=7, select=["id", "userPrincipalName"])
        page = await client.users.get(request_configuration=RequestConfiguration(query_parameters=q))
        ids: list[str] = []
        pages = 0
        while page is not None:
            pages += 1
            ids += [u.id for u in page.value or []]
            assert all(u.user_principal_name for u in page.value or [])
            if not page.odata_next_link:
                break
            page = await client.users.with_url(page.odata_next_link).get()
        assert len(ids) == len(set(ids)) == tenant["counts"]["users"] == 40
        assert pages == 6  # 40 users in pages of 7
    finally:
        await http.aclose()
        await cred.close()


async def test_sdk_groups_delta_with_members(sim: SimHandle, tenant: dict[str, Any]) -> None:
    tid = tenant["tenant_id"]
    client, cred, http = await _client(sim, tid)
    try:
        q = DeltaRequestBuilder.DeltaRequestBuilderGetQueryParameters(select=["displayName", "members"])
        page = await client.groups.delta.get(request_configuration=RequestConfiguration(query_parameters=q))
        names: dict[str, str] = {}
        members: dict[str, set[str]] = {}
        while True:
            assert page is not None
            for g in page.value or []:
                names[g.id] = g.display_name
                for m in g.additional_data.get("members@delta", []):
                    members.setdefault(g.id, set()).add(str(m["id"]))  # kiota parses GUID strings to UUID
            if page.odata_next_link:
                page = await client.groups.delta.with_url(page.odata_next_link).get()
                continue
            delta_link = page.odata_delta_link
            break
        assert delta_link and "$deltatoken=" in delta_link
        assert sum(len(v) for v in members.values()) > 0
        assert "O'Brien Field Team" in names.values() and list(names.values()).count("Field Sales") == 2
        root_id = next(k for k, v in names.items() if v == "MTD Enrollment")
        # a mutation between polls shows up in the next round as members@delta
        truth = sim.admin("GET", f"/_sim/tenants/{tid}/truth").json()
        assert truth["unresolved_groups"] == []
        users = sim.admin("POST", f"/_sim/tenants/{tid}/mutations", {"op": "add_user", "displayName": "SDK Hire"})
        new_id = users.json()["id"]
        r = sim.admin("POST", f"/_sim/tenants/{tid}/mutations",
                      {"op": "add_member", "group_id": root_id, "member_id": new_id})
        assert r.status_code == 200, r.text
        page = await client.groups.delta.with_url(delta_link).get()
        assert page is not None and page.odata_delta_link
        changed = {g.id: [{k: str(v) for k, v in m.items()} for m in g.additional_data.get("members@delta", [])]
                   for g in page.value or []}
        assert changed == {root_id: [{"@odata.type": "#microsoft.graph.user", "id": new_id}]}
    finally:
        await http.aclose()
        await cred.close()
