"""Graph reads of the enrollment poller (raw JSON pages through :class:`GraphClient`; declared in graph_calls.py).

No retries here: the GraphClient's transport is the one retry layer (429/5xx, float Retry-After). The only loop is
re-batching inner ``$batch`` items that came back 429, which no middleware retries (reference/graph.md §3).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from shared_code.adapters.graph import BatchItem, GraphClient
from shared_code.adapters.http_retry import MAX_DELAY_SECONDS, parse_retry_after
from shared_code.domain.devices import DEVICE_SELECT
from shared_code.domain.scope import odata_string
from shared_code.enrollment.graph_calls import permission
from shared_code.errors import FatalError, PermissionMissingError, RetriableError

log = logging.getLogger("connector.enrollment")

DEVICE_SELECT_PARAM = ",".join(DEVICE_SELECT)
BATCH_SIZE = 20  # Graph's $batch limit (json-batching)
# Inner 429s are re-batched this many times (waiting the longest Retry-After) before the poll gives up.
MAX_REBATCH_ROUNDS = 6
Sleeper = Callable[[float], Awaitable[None]]
# Called after every page and every $batch: lets the poll renew its lease (raises when the lease is lost).
KeepAlive = Callable[[], Awaitable[None]]


class DirectoryReader:
    """Enrollment's Graph reads for one tenant."""

    def __init__(
        self, graph: GraphClient, *, sleep: Sleeper = asyncio.sleep, keepalive: KeepAlive | None = None
    ) -> None:
        self.graph = graph
        self._sleep = sleep
        self._keepalive = keepalive

    async def _paged(self, pages: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        """``pages`` with the poll's keep-alive after every page (renews the poll lease on long reads)."""
        async for page in pages:
            yield page
            if self._keepalive is not None:
                await self._keepalive()

    async def groups_named(self, name: str) -> list[str]:
        """Ids of the groups whose display name equals ``name`` (Graph compares case-insensitively).

        Endpoint: ``GET /groups?$filter=displayName eq '<name>'&$select=id,displayName`` (quotes doubled).
        Permission: GroupMember.Read.All.

        Raises:
            PermissionMissingError, RetriableError, FatalError: see ``raise_for_graph``.
        """
        ids: list[str] = []
        params = {"$filter": f"displayName eq {odata_string(name)}", "$select": "id,displayName"}
        pages = self.graph.pages("/groups", permission=permission("graph.groups_by_name"), params=params)
        async for page in self._paged(pages):
            ids.extend(str(g["id"]) for g in page.get("value", ()))
        return sorted(ids)

    def groups_delta(self, link: str | None) -> AsyncIterator[dict[str, Any]]:
        """Pages of a ``groups/delta`` round: a new round when ``link`` is None, else from that delta/next link.

        Endpoint: ``GET /groups/delta?$select=displayName,members`` (later pages: the service's links unchanged).
        Permission: GroupMember.Read.All.

        Raises:
            CursorExpiredError: the link's token expired or is invalid (410, syncStateNotFound, resyncRequired).
            PermissionMissingError, RetriableError, FatalError: see ``raise_for_graph``.
        """
        perm = permission("graph.groups_delta")
        if link is None:
            params = {"$select": "displayName,members"}
            return self._paged(self.graph.pages("/groups/delta", permission=perm, params=params))
        return self._paged(self.graph.pages(link, permission=perm))

    async def groups_delta_latest(self) -> str:
        """A ``groups/delta`` deltaLink as of now, without reading any group ("sync from now").

        Endpoint: ``GET /groups/delta?$select=displayName,members&$deltatoken=latest`` — Graph answers a deltaLink
        and no data for users and groups (https://learn.microsoft.com/graph/delta-query-overview, optional query
        parameters; reference/graph.md §4). Permission: GroupMember.Read.All.

        Raises:
            PermissionMissingError, RetriableError, FatalError: see ``raise_for_graph``.
        """
        params = {"$select": "displayName,members", "$deltatoken": "latest"}
        link = ""
        pages = self.graph.pages("/groups/delta", permission=permission("graph.groups_delta"), params=params)
        async for page in self._paged(pages):
            link = str(page.get("@odata.deltaLink") or link)
        if not link:
            raise RetriableError("groups/delta?$deltatoken=latest answered without a deltaLink", status=502)
        return link

    def group_members(self, group_id: str) -> AsyncIterator[dict[str, Any]]:
        """Pages of a group's direct members (ids and ``@odata.type``), 999 per page.

        Endpoint: ``GET /groups/{id}/members?$select=id&$top=999``. Permission: GroupMember.Read.All.

        Raises:
            NotFoundError: the group no longer exists (404).
            PermissionMissingError, RetriableError, FatalError: see ``raise_for_graph``.
        """
        params = {"$select": "id", "$top": "999"}
        pages = self.graph.pages(f"/groups/{group_id}/members", permission=permission("graph.group_members"),
                                 params=params)
        return self._paged(pages)

    def resume(self, link: str, call: str) -> AsyncIterator[dict[str, Any]]:
        """Pages from a stored ``@odata.nextLink`` of the list ``call`` (a name in graph_calls.py).

        Raises:
            PermissionMissingError, RetriableError, FatalError: see ``raise_for_graph``.
        """
        return self._paged(self.graph.pages(link, permission=permission(call)))

    def devices_delta(self, link: str | None) -> AsyncIterator[dict[str, Any]]:
        """Pages of a ``devices/delta`` round (new when ``link`` is None).

        Endpoint: ``GET /devices/delta?$select=<device properties>``. Permission: Device.Read.All.

        Raises:
            CursorExpiredError: the token expired or is invalid.
            PermissionMissingError, RetriableError, FatalError: see ``raise_for_graph``.
        """
        perm = permission("graph.devices_delta")
        if link is None:
            params = {"$select": DEVICE_SELECT_PARAM}
            return self._paged(self.graph.pages("/devices/delta", permission=perm, params=params))
        return self._paged(self.graph.pages(link, permission=perm))

    async def count(self, collection: str) -> int | None:
        """``/users/$count`` or ``/devices/$count`` (ConsistencyLevel: eventual), None when the service refuses.

        Permission: User.Read.All (users) / Device.Read.All (devices).

        Raises:
            RetriableError: Graph unavailable after retries.
        """
        perm = "Device.Read.All" if collection == "devices" else permission("graph.object_counts")
        try:
            # The body is a bare number (text/plain); orjson parses it as an int. GraphClient has no text getter.
            value: Any = await self.graph.get_json(
                f"/{collection}/$count", permission=perm, headers={"ConsistencyLevel": "eventual"}
            )
        except PermissionMissingError:
            raise
        except (FatalError, ValueError) as exc:
            log.info("count of %s unavailable (%s); estimating without it", collection, type(exc).__name__)
            return None
        return value if isinstance(value, int) else None

    def devices_with_owners(self) -> AsyncIterator[dict[str, Any]]:
        """Every device with its registered owner expanded (≤ 100 per page with ``$expand``).

        Endpoint: ``GET /devices?$select=<device properties>&$expand=registeredOwners``. Permission: Device.Read.All.

        Raises:
            PermissionMissingError, RetriableError, FatalError: see ``raise_for_graph``.
        """
        params = {"$select": DEVICE_SELECT_PARAM, "$expand": "registeredOwners", "$top": "100"}
        return self._paged(
            self.graph.pages("/devices", permission=permission("graph.devices_with_owners"), params=params)
        )

    def users_with_owned_devices(self) -> AsyncIterator[dict[str, Any]]:
        """Every user with up to 20 owned devices expanded (≤ 100 users per page).

        Endpoint: ``GET /users?$select=id,accountEnabled&$expand=ownedDevices``. Permission: User.Read.All
        (Device.Read.All for the devices' properties).

        Raises:
            PermissionMissingError, RetriableError, FatalError: see ``raise_for_graph``.
        """
        params = {"$select": "id,accountEnabled", "$expand": "ownedDevices", "$top": "100"}
        return self._paged(
            self.graph.pages("/users", permission=permission("graph.users_with_owned_devices"), params=params)
        )

    async def disabled_users(self) -> set[str]:
        """Ids of disabled users.

        Endpoint: ``GET /users?$filter=accountEnabled eq false&$select=id&$top=999``. Permission: User.Read.All.

        Raises:
            PermissionMissingError, RetriableError, FatalError: see ``raise_for_graph``.
        """
        params = {"$filter": "accountEnabled eq false", "$select": "id", "$top": "999"}
        out: set[str] = set()
        pages = self.graph.pages("/users", permission=permission("graph.disabled_users"), params=params)
        async for page in self._paged(pages):
            out.update(str(u["id"]) for u in page.get("value", ()))
        return out

    async def owned_devices(self, user_ids: Iterable[str]) -> dict[str, list[dict[str, Any]] | None]:
        """Owned devices of each user, 20 users per ``$batch`` (None for a user that no longer exists).

        Endpoint: ``POST /$batch`` of ``GET /users/{id}/ownedDevices?$select=<device properties>``; a user with
        more devices than one page is followed with the inner ``@odata.nextLink``.
        Permission: User.Read.All (+ Device.Read.All for the properties).

        Raises:
            PermissionMissingError, RetriableError, FatalError: see ``raise_for_graph``; RetriableError also when
            inner 429s persist past the re-batch budget.
        """
        perm = permission("graph.user_owned_devices")
        urls = {uid: f"/users/{uid}/ownedDevices?$select={DEVICE_SELECT_PARAM}&$top=999" for uid in user_ids}
        bodies = await self._batched(urls, perm)
        return {uid: await self._whole(body, perm) for uid, body in bodies.items()}

    async def _whole(self, body: dict[str, Any] | None, perm: str) -> list[dict[str, Any]] | None:
        """Every item of a batched collection answer: its ``value`` plus the pages of its inner ``@odata.nextLink``
        (None when the answer was a 404)."""
        if body is None:
            return None
        items = list(body.get("value", ()))
        next_link = body.get("@odata.nextLink")
        if next_link:
            async for page in self._paged(self.graph.pages(str(next_link), permission=perm)):
                items.extend(page.get("value", ()))
        return items

    async def devices_by_id(self, device_ids: Iterable[str]) -> dict[str, dict[str, Any] | None]:
        """Each device with ``registeredOwners`` expanded, 20 per ``$batch`` (None when deleted).

        Endpoint: ``POST /$batch`` of ``GET /devices/{id}?$select=<device properties>&$expand=registeredOwners``.
        Permission: Device.Read.All.

        Raises:
            PermissionMissingError, RetriableError, FatalError: see ``raise_for_graph``.
        """
        perm = permission("graph.device_with_owner")
        urls = {
            did: f"/devices/{did}?$select={DEVICE_SELECT_PARAM}&$expand=registeredOwners" for did in device_ids
        }
        return await self._batched(urls, perm)

    async def pending_reads(
        self, user_ids: Iterable[str], device_ids: Iterable[str]
    ) -> tuple[dict[str, list[dict[str, Any]] | None], dict[str, dict[str, Any] | None]]:
        """Retry objects Graph could not read yet: users' owned devices and devices with their owner, in one set of
        ``$batch`` requests (20 per request, users and devices mixed) so k pending objects cost ⌈k/20⌉ requests.

        Endpoints: ``POST /$batch`` of ``GET /users/{id}/ownedDevices?$select=…`` (User.Read.All) and
        ``GET /devices/{id}?$select=…&$expand=registeredOwners`` (Device.Read.All). 404 (not replicated yet) → None.

        Raises:
            PermissionMissingError, RetriableError, FatalError: see ``raise_for_graph``.
        """
        urls = {f"u:{uid}": f"/users/{uid}/ownedDevices?$select={DEVICE_SELECT_PARAM}&$top=999" for uid in user_ids}
        urls.update({
            f"d:{did}": f"/devices/{did}?$select={DEVICE_SELECT_PARAM}&$expand=registeredOwners" for did in device_ids
        })
        perm = permission("graph.user_owned_devices")
        bodies = await self._batched(urls, perm)
        owned: dict[str, list[dict[str, Any]] | None] = {}
        devices: dict[str, dict[str, Any] | None] = {}
        for key, body in bodies.items():
            kind, oid = key.split(":", 1)
            if kind == "d":
                devices[oid] = body
            else:
                owned[oid] = await self._whole(body, perm)
        return owned, devices

    async def member_of(self, user_ids: Iterable[str], device_ids: Iterable[str]) -> dict[str, set[str] | None]:
        """Ids of the groups each user and device is a transitive member of (None: no such object), 20 per ``$batch``.

        The second, independent read that re-verifies a deactivation derived from membership data.
        Endpoints: ``POST /$batch`` of ``GET /users/{id}/transitiveMemberOf?$select=id&$top=999`` (User.Read.All)
        and ``GET /devices/{id}/transitiveMemberOf?$select=id&$top=999`` (Device.Read.All); a member of more than
        999 groups is followed with the inner ``@odata.nextLink``.

        Raises:
            PermissionMissingError, RetriableError, FatalError: see ``raise_for_graph``.
        """
        out: dict[str, set[str] | None] = {}
        for ids, call, collection in ((user_ids, "graph.user_member_of", "users"),
                                      (device_ids, "graph.device_member_of", "devices")):
            perm = permission(call)
            urls = {oid: f"/{collection}/{oid}/transitiveMemberOf?$select=id&$top=999" for oid in ids}
            for oid, body in (await self._batched(urls, perm)).items():
                groups = await self._whole(body, perm)
                out[oid] = None if groups is None else {str(g["id"]) for g in groups}
        return out

    async def _batched(self, urls: dict[str, str], perm: str) -> dict[str, dict[str, Any] | None]:
        """Run GETs 20 per ``$batch``; re-batch inner 429s after the longest Retry-After; 404 → None."""
        keys = list(urls)
        results: dict[str, dict[str, Any] | None] = {}
        for start in range(0, len(keys), BATCH_SIZE):
            pending = {f"{i}": k for i, k in enumerate(keys[start : start + BATCH_SIZE])}
            for _ in range(MAX_REBATCH_ROUNDS):
                items = [BatchItem(id=bid, url=urls[key]) for bid, key in pending.items()]
                responses = await self.graph.batch(items, permission=perm)
                if self._keepalive is not None:
                    await self._keepalive()
                wait = 0.0
                retry: dict[str, str] = {}
                for bid, key in pending.items():
                    inner = responses.get(bid)
                    status = int(inner.get("status", 500)) if inner else 500
                    if status == 200:
                        body = inner.get("body") if inner else None
                        results[key] = body if isinstance(body, dict) else {}
                    elif status == 404:
                        results[key] = None
                    elif status == 429 or status >= 500:
                        headers = {k.lower(): v for k, v in ((inner or {}).get("headers") or {}).items()}
                        delay = parse_retry_after(str(headers.get("retry-after"))) or 1.0
                        wait = max(wait, min(delay, MAX_DELAY_SECONDS))
                        retry[bid] = key
                    elif status == 403:
                        raise PermissionMissingError("Graph denied a batched call", permission=perm)
                    else:
                        raise FatalError(f"Graph rejected a batched request ({status})", status=status)
                if not retry:
                    break
                pending = retry
                await self._sleep(wait)
            else:
                raise RetriableError("batched Graph requests kept being throttled", status=429)
        return results
