"""A small fake of :class:`shared_code.adapters.graph.GraphClient` over an in-memory directory (no HTTP).

It answers only what the enrollment reader asks (``$count``, ``groups/delta`` (also ``$deltatoken=latest``),
``/groups/{id}/members``, ``devices/delta``, ``/groups?$filter``, ``/devices?$expand=registeredOwners``,
``/users?$filter=accountEnabled eq false``, ``$batch`` of ``ownedDevices``, ``devices/{id}`` and
``transitiveMemberOf``), with Graph's shapes: ``members@delta`` items carry ``@odata.type`` and removed ones
``@removed``; delta rounds end with an ``@odata.deltaLink`` that replays only later changes. Every call is counted in
``requests``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlparse

from shared_code.adapters.graph import BatchItem
from shared_code.adapters.http_retry import UsageMeter

KIND_TYPES = {"u": "#microsoft.graph.user", "d": "#microsoft.graph.device", "g": "#microsoft.graph.group"}


@dataclass
class FakeDirectory:
    """Users, devices (with one registered owner) and groups, with a change log for delta rounds."""

    users: dict[str, bool] = field(default_factory=dict)  # id → accountEnabled
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)  # id → {"os", "owner"}
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # id → {"name", "members": {id: kind}}
    version: int = 0
    group_log: list[tuple[int, str, dict[str, Any] | None]] = field(default_factory=list)
    device_log: list[tuple[int, str]] = field(default_factory=list)
    # Groups per page of a new groups/delta round (None: the whole round is one page, as for a small tenant).
    round_page_groups: int | None = None

    def add_user(self, uid: str, *, enabled: bool = True) -> None:
        self.users[uid] = enabled

    def set_enabled(self, uid: str, enabled: bool) -> None:
        self.users[uid] = enabled

    def add_device(self, did: str, os: str, owner: str | None) -> None:
        self.devices[did] = {"os": os, "owner": owner}
        self.version += 1
        self.device_log.append((self.version, did))

    def add_group(self, gid: str, name: str) -> None:
        self.groups[gid] = {"name": name, "members": {}}
        self.version += 1
        self.group_log.append((self.version, gid, None))

    def add_member(self, gid: str, mid: str, kind: str) -> None:
        self.groups[gid]["members"][mid] = kind
        self.version += 1
        self.group_log.append((self.version, gid, {"id": mid, "@odata.type": KIND_TYPES[kind]}))

    def remove_member(self, gid: str, mid: str) -> None:
        kind = self.groups[gid]["members"].pop(mid)
        self.version += 1
        self.group_log.append(
            (self.version, gid, {"id": mid, "@odata.type": KIND_TYPES[kind], "@removed": {"reason": "deleted"}})
        )

    def transitive_member_of(self, oid: str) -> set[str]:
        """Groups ``oid`` is a member of, directly or through nested groups."""
        out: set[str] = set()
        todo = [oid]
        while todo:
            child = todo.pop()
            for gid, g in self.groups.items():
                if child in g["members"] and gid not in out:
                    out.add(gid)
                    todo.append(gid)
        return out

    def device_json(self, did: str, *, owners: bool = False) -> dict[str, Any]:
        dev = self.devices[did]
        obj: dict[str, Any] = {"id": did, "deviceId": f"dev-{did}", "displayName": did, "operatingSystem": dev["os"]}
        if owners:
            obj["registeredOwners"] = [{"id": dev["owner"]}] if dev["owner"] else []
        return obj


class FakeGraph:
    """The GraphClient methods the reader uses, answered from a :class:`FakeDirectory`."""

    def __init__(self, directory: FakeDirectory, *, pause: Callable[[], Awaitable[None]] | None = None) -> None:
        self.dir = directory
        self.requests: list[str] = []
        self.meter = UsageMeter()
        self._pause = pause

    async def _count(self, what: str) -> None:
        self.requests.append(what)
        if self._pause is not None:
            await self._pause()

    async def aclose(self) -> None:
        return None

    async def get_json(self, path_or_url: str, *, permission: str, **_: Any) -> Any:
        await self._count(path_or_url)
        if path_or_url == "/users/$count":
            return len(self.dir.users)
        if path_or_url == "/devices/$count":
            return len(self.dir.devices)
        raise AssertionError(f"unexpected GET {path_or_url}")

    async def pages(
        self, path_or_url: str, *, permission: str, params: Mapping[str, str] | None = None, **_: Any
    ) -> AsyncIterator[dict[str, Any]]:
        await self._count(path_or_url)
        page = self._page(path_or_url, dict(params or {}))
        yield page
        while str(page.get("@odata.nextLink") or "").startswith("fake://groups/round"):
            await self._count(str(page["@odata.nextLink"]))
            page = self._page(str(page["@odata.nextLink"]), {})
            yield page

    def _page(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        d = self.dir
        if path.startswith("fake://groups/delta"):
            since = int(parse_qs(urlparse(path).query)["v"][0])
            return {"value": self._groups_since(since), "@odata.deltaLink": f"fake://groups/delta?v={d.version}"}
        if path == "/groups/delta" and params.get("$deltatoken") == "latest":
            # Sync from now: a deltaLink and no data (delta-query-overview, users and groups).
            return {"value": [], "@odata.deltaLink": f"fake://groups/delta?v={d.version}"}
        member_path = re.fullmatch(r"/groups/([^/]+)/members", path)
        if member_path is not None:
            group = d.groups[member_path.group(1)]
            return {"value": [{"id": m, "@odata.type": KIND_TYPES[k]} for m, k in group["members"].items()]}
        if path == "/groups/delta" or path.startswith("fake://groups/round"):
            value = [
                {"id": gid, "displayName": g["name"],
                 "members@delta": [{"id": m, "@odata.type": KIND_TYPES[k]} for m, k in g["members"].items()]}
                for gid, g in d.groups.items()
            ]
            skip = int(parse_qs(urlparse(path).query)["skip"][0]) if path.startswith("fake://") else 0
            size = d.round_page_groups or len(value)
            if skip + size < len(value):
                more = f"fake://groups/round?skip={skip + size}"
                return {"value": value[skip : skip + size], "@odata.nextLink": more}
            return {"value": value[skip:], "@odata.deltaLink": f"fake://groups/delta?v={d.version}"}
        if path.startswith("fake://devices/delta"):
            since = int(parse_qs(urlparse(path).query)["v"][0])
            ids = sorted({did for v, did in d.device_log if v > since})
            value = [d.device_json(i) if i in d.devices else {"id": i, "@removed": {"reason": "deleted"}} for i in ids]
            return {"value": value, "@odata.deltaLink": f"fake://devices/delta?v={d.version}"}
        if path == "/devices/delta":
            value = [d.device_json(i) for i in sorted(d.devices)]
            return {"value": value, "@odata.deltaLink": f"fake://devices/delta?v={d.version}"}
        if path == "/groups":
            name = re.fullmatch(r"displayName eq '(.*)'", params["$filter"]).group(1).replace("''", "'")  # type: ignore[union-attr]
            return {"value": [{"id": gid, "displayName": g["name"]} for gid, g in d.groups.items()
                              if g["name"].casefold() == name.casefold()]}
        if path == "/devices" and params.get("$expand") == "registeredOwners":
            return {"value": [d.device_json(i, owners=True) for i in sorted(d.devices)]}
        if path == "/users" and params.get("$filter") == "accountEnabled eq false":
            return {"value": [{"id": u} for u, enabled in sorted(d.users.items()) if not enabled]}
        raise AssertionError(f"unexpected pages {path} {params}")

    def _groups_since(self, since: int) -> list[dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for v, gid, member in self.dir.group_log:
            if v <= since or gid not in self.dir.groups:
                continue
            obj = out.setdefault(gid, {"id": gid, "displayName": self.dir.groups[gid]["name"], "members@delta": []})
            if member is not None:
                obj["members@delta"].append(member)
        return list(out.values())

    async def batch(self, items: list[BatchItem], *, permission: str) -> dict[str, dict[str, Any]]:
        await self._count("$batch")
        out: dict[str, dict[str, Any]] = {}
        for item in items:
            parts = urlparse(item.url).path.strip("/").split("/")
            if len(parts) == 3 and parts[2] == "transitiveMemberOf":
                oid = parts[1]
                if oid not in (self.dir.users if parts[0] == "users" else self.dir.devices):
                    out[item.id] = {"id": item.id, "status": 404, "body": {}}
                    continue
                groups = [{"id": g} for g in sorted(self.dir.transitive_member_of(oid))]
                out[item.id] = {"id": item.id, "status": 200, "body": {"value": groups}}
            elif parts[0] == "users" and parts[2] == "ownedDevices":
                uid = parts[1]
                if uid not in self.dir.users:
                    out[item.id] = {"id": item.id, "status": 404, "body": {}}
                    continue
                owned = [self.dir.device_json(i) for i, dev in sorted(self.dir.devices.items()) if dev["owner"] == uid]
                out[item.id] = {"id": item.id, "status": 200, "body": {"value": owned}}
            elif parts[0] == "devices":
                did = parts[1]
                if did not in self.dir.devices:
                    out[item.id] = {"id": item.id, "status": 404, "body": {}}
                else:
                    out[item.id] = {"id": item.id, "status": 200, "body": self.dir.device_json(did, owners=True)}
            else:
                raise AssertionError(f"unexpected batch item {item.url}")
        return out


def never() -> Callable[[], Awaitable[None]]:
    """A pause that never ends (for time limits)."""

    async def wait() -> None:
        await asyncio.Event().wait()

    return wait
