"""The full reconcile, in bounded steps that each commit durably and resume after a timeout, crash or redelivery.

A poll runs steps until its time budget (``STEP_SECONDS``) is spent; a small tenant finishes in its first poll and
writes no checkpoint at all. A big one persists where it stands (the enrollment store's checkpoint: a JSON head and
compressed chunk rows) and the service enqueues a continuation message; any later poll of the tenant continues the
same run (a lost continuation only waits for the next scheduled poll). Phases:

1. **scope** — ``groups/delta?$deltatoken=latest`` (a cursor for later incremental polls, no data:
   https://learn.microsoft.com/graph/delta-query-overview, supported for users and groups), the configured names by
   ``$filter``, then the members of only the groups in scope, nested groups walked breadth first. A group nested into
   scope later arrives through ``members@delta`` and is walked then (:func:`walk_new_groups`). A small tenant's
   whole ``groups/delta`` round is one page; then that page serves as cursor and membership data (no walks).
2. **read** — devices and owners with the strategy the cost model picks (strategies.py), page by page; each step's
   findings are one chunk, committed with the next link of the read. A replayed step rewrites the same chunk.
3. **apply** — shard by shard (store.py): enrolls and updates are applied as each shard is reconciled against the
   complete desired set; deactivations are only counted. Replanning a shard after a crash yields only what is
   still missing (the plan is idempotent), so nothing is written twice.
4. **deactivate** — the guard decides on the total (the engine's one guard call site); allowed deactivations are
   applied. Deactivations never come from a partial read: this phase starts only after every page was read.
5. **commit** — graph (only when it changed), cursors, status: last. A daily full reconcile that finds nothing
   changed writes only its cursor and status.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared_code.domain import guard
from shared_code.domain.devices import DeviceRecord, device_from_graph, normalize_platforms, platform_matches
from shared_code.domain.idset import IdSet, IdSetBuilder
from shared_code.domain.reconcile import (
    DEACTIVATE,
    ENROLLED,
    Desired,
    Facts,
    Plan,
    PlanItem,
    Stored,
    desired_set,
    reconcile,
)
from shared_code.domain.scope import (
    GROUP,
    GroupNode,
    MembershipGraph,
    Resolution,
    Scope,
    expand_scope,
    member_kind,
    resolve_from_matches,
)
from shared_code.domain.timestamps import utc_iso
from shared_code.enrollment import strategies
from shared_code.enrollment.reader import DirectoryReader
from shared_code.enrollment.store import SHARD_WRITE_CONCURRENCY, EnrollmentStore
from shared_code.errors import InconsistentReadError, NotFoundError
from shared_code.tenants import TenantConfig

log = logging.getLogger("connector.enrollment")

# One poll works this long, then commits where it stands and hands over to a continuation message: far inside
# host.json's functionTimeout (10 min) even on Azurite, and under the 2-minute bound per invocation.
STEP_SECONDS = 60.0
# Changes written per slice between budget checks (10 transactions of new devices).
APPLY_SLICE = 330
_GRAPH_CHUNK, _PLAN_CHUNK = 0, 99_999
# 2: chunks are JSON lines with positional records and 16-byte id keys (version 1 runs are abandoned).
CHECKPOINT_VERSION = 2
# A checkpoint older than this is abandoned (a run that cannot finish starts over).
CHECKPOINT_MAX_AGE_SECONDS = 24 * 3600

# The engine's one guard call site (re-verification reads, plan id, causes): (plan, resolution, scope, enrolled).
GuardFn = Callable[[Plan, Resolution, Scope, int], Awaitable[guard.GuardDecision]]


@dataclass
class Budget:
    """How much one poll may do before it commits and continues later (time; pages and slices for tests)."""

    seconds: float | None = STEP_SECONDS
    pages: int | None = None
    slices: int | None = None
    slice_size: int = APPLY_SLICE
    started: float = field(default_factory=time.monotonic)
    used_pages: int = 0
    used_slices: int = 0

    def spent(self) -> bool:
        """Whether this poll should stop at the next commit point."""
        if self.seconds is not None and time.monotonic() - self.started >= self.seconds:
            return True
        if self.pages is not None and self.used_pages >= self.pages:
            return True
        return self.slices is not None and self.used_slices >= self.slices


# Records per line of a checkpoint chunk (chunks are JSON lines, written and read a line at a time).
_LINE_RECORDS = 500


def _json_line(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


def _batch_lines(kind: str, rows: Iterable[Any]) -> Iterator[bytes]:
    """Rows as lines ``[kind, [row, …]]`` of ``_LINE_RECORDS`` rows each (no line when there is no row)."""
    batch: list[Any] = []
    for row in rows:
        batch.append(row)
        if len(batch) == _LINE_RECORDS:
            yield _json_line([kind, batch])
            batch = []
    if batch:
        yield _json_line([kind, batch])


def _id_lines(kind: str, pieces: Iterable[tuple[bytes, list[str]]]) -> Iterator[bytes]:
    """An id set as lines ``[kind, base64 keys, other ids]`` (idset.py: 16 bytes a GUID, not a 36-char str)."""
    for keys, other in pieces:
        yield _json_line([kind, base64.b64encode(keys).decode(), other])


@dataclass
class Fragment:
    """What some pages of the devices + owners read found (one checkpoint chunk).

    Kept compact, since a big tenant's read holds every step's fragment until the read is complete: the device ids
    Graph listed (``seen``) and that users own (``owned``) as 16-byte keys (idset.py), records with shared strings.
    """

    records: dict[str, DeviceRecord] = field(default_factory=dict)
    seen: IdSetBuilder = field(default_factory=IdSetBuilder)
    owned: IdSetBuilder = field(default_factory=IdSetBuilder)
    ownerless: list[str] = field(default_factory=list)
    disabled: set[str] = field(default_factory=set)
    users: int = 0
    devices: int = 0
    capped: int = 0

    def lines(self) -> Iterator[bytes]:
        """Serialized form: JSON lines (a header of counts and small lists, then records, then ids)."""
        yield _json_line({"u": self.users, "v": self.devices, "c": self.capped, "n": self.ownerless,
                          "x": sorted(self.disabled)})
        yield from _batch_lines("r", (rec.to_row() for rec in self.records.values()))
        yield from _id_lines("s", self.seen.key_pieces())
        yield from _id_lines("o", self.owned.key_pieces())

    def absorb(self, lines: Iterable[bytes]) -> None:
        """Merge a serialized fragment (:meth:`lines`) into this one, line by line (as :meth:`merge`)."""
        header: dict[str, Any] | None = None
        for line in lines:
            raw = json.loads(line)
            if header is None:
                header = raw
                self.merge(Fragment(ownerless=list(raw["n"]), disabled=set(raw["x"]), users=int(raw["u"]),
                                    devices=int(raw["v"]), capped=int(raw["c"])))
            elif raw[0] == "r":
                self.records.update((str(row[0]), DeviceRecord.from_row(row)) for row in raw[1])
            elif raw[0] in ("s", "o"):
                (self.seen if raw[0] == "s" else self.owned).add_keys(base64.b64decode(raw[1]), raw[2])

    def merge(self, other: Fragment) -> None:
        """Add another fragment's findings (later pages win for a record seen twice)."""
        self.records.update(other.records)
        self.seen.merge(other.seen)
        self.owned.merge(other.owned)
        known = set(self.ownerless)
        self.ownerless += [d for d in other.ownerless if d not in known]
        self.disabled |= other.disabled
        self.users += other.users
        self.devices += other.devices
        self.capped += other.capped


@dataclass
class PlanInput:
    """Everything the apply phases need, computed once the read is complete.

    ``current`` holds every record read (the desired ones are the same objects as in ``desired``); ``seen`` the ids
    Graph listed (None when the strategy cannot observe deletions).
    """

    desired: dict[str, Desired]
    current: dict[str, DeviceRecord]
    seen: IdSet | None
    disabled: set[str]
    ownerless: list[str] | None

    def lines(self) -> Iterator[bytes]:
        """Serialized form: JSON lines (header, desired, the other current records, seen ids)."""
        yield _json_line({"x": sorted(self.disabled), "n": self.ownerless, "s": self.seen is not None})
        yield from _batch_lines("d", ([want.record.to_row(), want.via, want.path] for want in self.desired.values()))
        yield from _batch_lines("c", (rec.to_row() for did, rec in self.current.items() if did not in self.desired))
        if self.seen is not None:
            yield from _id_lines("s", self.seen.key_pieces())

    @classmethod
    def from_lines(cls, lines: Iterable[bytes]) -> PlanInput:
        """Inverse of :meth:`lines`, read line by line."""
        it = iter(lines)
        head = json.loads(next(it))
        desired: dict[str, Desired] = {}
        current: dict[str, DeviceRecord] = {}
        keys: list[bytes] = []
        other: list[str] = []
        for line in it:
            raw = json.loads(line)
            if raw[0] == "d":
                for row, via, path in raw[1]:
                    rec = DeviceRecord.from_row(row)
                    desired[rec.id] = Desired(rec, str(via), str(path))
                    current[rec.id] = rec
            elif raw[0] == "c":
                current.update((str(row[0]), DeviceRecord.from_row(row)) for row in raw[1])
            elif raw[0] == "s":  # the pieces of a built IdSet, in order: already sorted and unique
                keys.append(base64.b64decode(raw[1]))
                other += raw[2]
        ownerless = head["n"]
        seen = IdSet(b"".join(keys), frozenset(other)) if head["s"] else None
        return cls(desired, current, seen, set(head["x"]), list(ownerless) if ownerless is not None else None)


@dataclass
class FullResult:
    """What this poll's share of the run did."""

    done: bool
    phase: str
    run: str
    applied: dict[str, int]
    plan: Plan
    decision: guard.GuardDecision | None = None
    resolution: Resolution | None = None
    ownerless: list[str] | None = None
    desired: int = 0
    enrolled: int = 0
    staged: int = 0
    shape: dict[str, Any] | None = None
    strategy: dict[str, Any] | None = None
    disabled: set[str] | None = None
    groups_link: str = ""
    graph: MembershipGraph | None = None
    scope: Scope | None = None
    steps: int = 1


async def walk_groups(reader: DirectoryReader, graph: MembershipGraph, roots: Iterable[str]) -> set[str]:
    """Read the direct members of ``roots`` and, breadth first, of every group nested in them (cycle safe).

    Each walked group's members replace what the graph held for it. Returns the groups walked. A group deleted
    meanwhile (404) is dropped from the graph.
    """
    walked: set[str] = set()
    queue = list(dict.fromkeys(roots))
    while queue:
        gid = queue.pop(0)
        if gid in walked:
            continue
        walked.add(gid)
        members: dict[str, str] = {}
        try:
            async for page in reader.group_members(gid):
                for member in page.get("value", ()):
                    members[str(member["id"])] = member_kind(member)
        except NotFoundError:
            graph.groups.pop(gid, None)
            continue
        node = graph.groups.get(gid)
        graph.groups[gid] = GroupNode(node.name if node is not None else "", members)
        queue += [m for m, kind in members.items() if kind == GROUP and m not in walked]
    return walked


async def walk_new_groups(
    reader: DirectoryReader, graph: MembershipGraph, resolved: Mapping[str, str], known: Iterable[str]
) -> bool:
    """Walk the groups in scope of ``resolved`` that were not in scope before (``known``); True when any was walked.

    The stored graph holds complete member lists only for groups that were in scope (a full reconcile reads only
    those); a group that enters scope later — nested by ``members@delta``, or a name that now resolves — is read
    here, with whatever it nests.
    """
    walked: set[str] = set(known)
    any_walked = False
    while True:
        todo = sorted(expand_scope(graph, resolved).groups - walked)
        if not todo:
            return any_walked
        walked |= await walk_groups(reader, graph, todo)
        any_walked = True


def graph_digest(graph: MembershipGraph) -> str:
    """Fingerprint of a membership graph (a full reconcile saves the graph only when it changed)."""
    data = json.dumps(graph.to_json(), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest()[:32]


class FullReconcile:
    """One tenant's full reconcile run, continued across polls from the store's checkpoint."""

    def __init__(
        self,
        *,
        store: EnrollmentStore,
        reader: DirectoryReader,
        config: TenantConfig,
        now: float,
        dry_run: bool,
        budget: Budget,
        decide: GuardFn,
        keepalive: Callable[[], Awaitable[None]] | None,
    ) -> None:
        self.store = store
        self.reader = reader
        self.cfg = config
        self.now = now
        self.dry_run = dry_run
        self.budget = budget
        self._decide = decide
        self._keepalive = keepalive
        self.tid = config.tenant_id
        self.plat = normalize_platforms(config.platforms)
        self.head: dict[str, Any] = {}
        self.graph = MembershipGraph()
        self.resolution = Resolution({}, [])
        self.scope = Scope({}, {}, frozenset())
        self.frag = Fragment()
        self.plan_input: PlanInput | None = None
        self.persisted = False
        self.items_applied: list[PlanItem] = []
        self.staged_items: list[PlanItem] = []
        self.decision: guard.GuardDecision | None = None
        self.dry_plan = Plan(())

    # ---- entry ----------------------------------------------------------------------------------------------------

    async def run(self, shape: Mapping[str, Any], users: int | None, devices: int | None) -> FullResult:
        """Continue the tenant's run (or start one) until it finishes or the budget is spent."""
        resumed = None if self.dry_run else await self._resume()
        if resumed is None:
            await self._start(shape, users, devices)
        phases = {"read": self._read, "apply": self._apply, "deactivate": self._deactivate}
        try:
            while self.head["phase"] in phases:
                finished = await phases[self.head["phase"]]()
                if not finished:
                    await self._persist()
                    return self._result(done=False)
        except InconsistentReadError:
            # The run's reads contradict Graph: continuing it would meet the same contradiction. The next poll
            # starts a fresh run (nothing destructive was written; enrolls and updates already applied stand).
            if self.persisted:
                await self.store.clear_checkpoint(self.tid)
            raise
        return await self._commit()

    async def _resume(self) -> dict[str, Any] | None:
        head = await self.store.checkpoint(self.tid)
        if head is None:
            return None
        stale = (head.get("v") != CHECKPOINT_VERSION or head.get("configVersion") != self.cfg.config_version
                 or self.now - float(head.get("startedAt") or 0) > CHECKPOINT_MAX_AGE_SECONDS)
        if stale:
            log.info("tenant %s: abandoning reconcile checkpoint %s (stale)", self.tid, head.get("run"))
            await self.store.clear_checkpoint(self.tid)
            return None
        self.head = head
        self.head["steps"] = int(head.get("steps") or 1) + 1
        self.persisted = True
        chunk = await self.store.checkpoint_chunks(self.tid, {**head, "chunkRows": {
            k: v for k, v in (head.get("chunkRows") or {}).items() if int(k) == _GRAPH_CHUNK}})
        scope_doc = json.loads(chunk[_GRAPH_CHUNK])
        del chunk
        self.graph = MembershipGraph.from_json(scope_doc["graph"])
        self.resolution = Resolution(dict(scope_doc["resolved"]), list(scope_doc["unresolved"]))
        del scope_doc
        self.scope = expand_scope(self.graph, self.resolution.resolved)
        if str(_PLAN_CHUNK) in (head.get("chunkRows") or {}):
            self.plan_input = PlanInput.from_lines(await self.store.checkpoint_chunk_lines(self.tid, head,
                                                                                            _PLAN_CHUNK))
        log.info("tenant %s: continuing full reconcile %s (phase %s, step %d)", self.tid, head["run"],
                 head["phase"], self.head["steps"])
        return head

    async def _groups_round_if_one_page(self) -> tuple[MembershipGraph, str] | None:
        """The whole ``groups/delta`` round when it is one page (every group with its members, and the cursor).

        A small tenant's round is one page: cheaper than ``$deltatoken=latest`` plus one walk per group in scope (an
        M tenant: 1 request instead of 11). A longer round is left after its first page — one request, against the
        tens to thousands of pages the round would take — and the cursor without data plus member walks follow.
        """
        async for page in self.reader.groups_delta(None):
            link = str(page.get("@odata.deltaLink") or "")
            if not link:
                return None
            graph = MembershipGraph()
            graph.apply_page(page.get("value", ()))
            return graph, link
        return None

    async def _start(self, shape_status: Mapping[str, Any], users: int | None, devices: int | None) -> None:
        whole = await self._groups_round_if_one_page()
        groups_link = whole[1] if whole is not None else await self.reader.groups_delta_latest()
        matches = {name: await self.reader.groups_named(name) for name in self.cfg.enrollment_groups}
        self.resolution = resolve_from_matches(matches)
        if whole is not None:
            self.graph = whole[0]
            # The groups a configured name matches carry that name, so later polls resolve names locally exactly as
            # this $filter did. One the round lacks stays absent: scope then names it missing (an inconsistent read,
            # nothing written), as a walk that finds no such group does.
            for name, ids in matches.items():
                for gid in ids:
                    node = self.graph.groups.get(gid)
                    if node is not None:
                        self.graph.groups[gid] = GroupNode(name, node.members)
        else:
            # Every group a configured name matches is kept with its name (see above; an ambiguous name stays
            # ambiguous until Graph says otherwise), then the groups in scope are walked.
            for name, ids in matches.items():
                for gid in ids:
                    self.graph.groups.setdefault(gid, GroupNode(name))
            await walk_groups(self.reader, self.graph, self.resolution.resolved.values())
        self.scope = expand_scope(self.graph, self.resolution.resolved)
        shape = strategies.Shape(
            users=int(users if users is not None else 1000),
            devices=int(devices if devices is not None else 2000),
            scope_users=len(self.scope.users),
            scope_devices=len(self.scope.devices),
            capped_users=int(shape_status.get("cappedUsers") or 1),
        )
        best, costs = strategies.choose(shape)
        log.info("tenant %s: full reconcile strategy %s (estimates: %s; shape users=%d devices=%d scope=%d)",
                 self.tid, best.strategy, [c.to_dict() for c in costs], shape.users, shape.devices, shape.scope_users)
        self.head = {
            "v": CHECKPOINT_VERSION, "run": uuid.uuid4().hex[:16], "configVersion": self.cfg.config_version,
            "startedAt": self.now, "phase": "read", "steps": 1, "groupsLink": groups_link,
            "strategy": {**best.to_dict(), "estimates": [c.to_dict() for c in costs]},
            "shape": {"users": shape.users, "devices": shape.devices, "cappedUsers": shape.capped_users},
            "read": {"stage": 0, "link": None}, "nextChunk": 1, "before": {}, "deactivations": {},
            "applied": {"enroll": 0, "update": 0, "deactivate": 0}, "chunkRows": {},
        }

    # ---- persistence ----------------------------------------------------------------------------------------------

    async def _persist(self) -> None:
        """Commit where this run stands: new chunks first, then the head that names them."""
        if self.dry_run:
            return
        chunks: dict[int, bytes | Iterable[bytes]] = {}
        if not self.persisted:
            chunks[_GRAPH_CHUNK] = json.dumps({
                "graph": self.graph.to_json(), "resolved": self.resolution.resolved,
                "unresolved": self.resolution.unresolved,
            }, separators=(",", ":")).encode()
        if self.head["phase"] == "read" and (self.frag.seen or self.frag.owned or self.frag.records
                                             or self.frag.users):
            chunks[int(self.head["nextChunk"])] = self.frag.lines()
            self.head["nextChunk"] = int(self.head["nextChunk"]) + 1
            self.frag = Fragment()
        if self.plan_input is not None and str(_PLAN_CHUNK) not in (self.head.get("chunkRows") or {}):
            chunks[_PLAN_CHUNK] = self.plan_input.lines()
        if self._keepalive is not None:
            await self._keepalive()
        await self.store.put_checkpoint(self.tid, self.head, chunks)
        self.persisted = True

    # ---- phase: read ----------------------------------------------------------------------------------------------

    async def _read(self) -> bool:
        state = self.head["read"]
        strategy = self.head["strategy"]["strategy"]
        stages = _STAGES[strategy]
        while state["stage"] < len(stages):
            finished = await stages[state["stage"]](self, state)
            if not finished:
                return False
            state["stage"] += 1
            state["link"] = None
            state["offset"] = 0
        await self._finish_read()
        self.head["phase"] = "apply"
        return True

    def _page_done(self, state: dict[str, Any], page: Mapping[str, Any]) -> bool:
        """Record the next link after a page; True when the stage should stop here (end of list or budget)."""
        self.budget.used_pages += 1
        state["link"] = str(page.get("@odata.nextLink") or "") or None
        return state["link"] is None or self.budget.spent()

    async def _devices_with_owners(self, state: dict[str, Any]) -> bool:
        link = state.get("link")
        pages = self.reader.resume(link, "graph.devices_with_owners") if link else self.reader.devices_with_owners()
        async for page in pages:
            for obj in page.get("value", ()):
                self.frag.devices += 1
                did = str(obj["id"])
                self.frag.seen.add(did)
                owner = _owner_of(obj)
                if owner is None and platform_matches(str(obj.get("operatingSystem") or ""), self.plat):
                    self.frag.ownerless.append(did)
                if self.scope.may_contain(did, owner):
                    self.frag.records[did] = device_from_graph(obj, owner)
            if self._page_done(state, page):
                break
        return state["link"] is None

    def _take_owned(self, uid: str, devices: Iterable[Mapping[str, Any]]) -> None:
        for dev in devices:
            did = str(dev["id"])
            self.frag.owned.add(did)
            if uid in self.scope.users or did in self.scope.devices:
                self.frag.records[did] = device_from_graph(dict(dev), uid)

    async def _users_expand(self, state: dict[str, Any]) -> bool:
        link = state.get("link")
        pages = self.reader.resume(link, "graph.users_with_owned_devices") if link \
            else self.reader.users_with_owned_devices()
        capped: list[str] = []
        async for page in pages:
            for user in page.get("value", ()):
                self.frag.users += 1
                uid = str(user["id"])
                if user.get("accountEnabled") is False:
                    self.frag.disabled.add(uid)
                devices = user.get("ownedDevices") or []
                if len(devices) >= strategies.EXPAND_CAP:
                    capped.append(uid)  # the expansion may be cut at 20: read this user's list in full below
                self._take_owned(uid, devices)
            if self._page_done(state, page):
                break
        # This step's capped users, batched before the step commits (a replayed step reads them again).
        if capped:
            self.frag.capped += len(capped)
            for uid, devices in (await self.reader.owned_devices(capped)).items():
                self._take_owned(uid, devices or ())
        return state["link"] is None

    async def _per_user(self, state: dict[str, Any]) -> bool:
        users = sorted(self.scope.users)
        step = 20 * 10  # ten $batch requests between budget checks
        while state.get("offset", 0) < len(users):
            start = int(state.get("offset", 0))
            chunk = users[start : start + step]
            for uid, devices in (await self.reader.owned_devices(chunk)).items():
                for dev in devices or ():
                    self.frag.records[str(dev["id"])] = device_from_graph(dev, uid)
            state["offset"] = start + len(chunk)
            self.budget.used_pages += max(1, len(chunk) // 20)
            if state["offset"] < len(users) and self.budget.spent():
                return False
        return True

    async def _direct_members(self, state: dict[str, Any]) -> bool:
        """Devices that are direct members, with their owner (20 per ``$batch``; also finds ownerless members)."""
        found = await self.reader.devices_by_id(sorted(self.scope.devices))
        for did, obj in found.items():
            if obj is not None:
                self.frag.records.setdefault(did, device_from_graph(obj, _owner_of(obj)))
        return True

    async def _finish_read(self) -> None:
        """Merge every chunk of the read, apply the scope rule: the complete desired set."""
        inv = Fragment()
        if self.persisted:  # chunk by chunk, in order, a line at a time (never every chunk decompressed at once)
            for n in sorted(int(k) for k in (self.head.get("chunkRows") or {})
                            if int(k) not in (_GRAPH_CHUNK, _PLAN_CHUNK)):
                inv.absorb(await self.store.checkpoint_chunk_lines(self.tid, self.head, n))
        inv.merge(self.frag)
        self.frag = Fragment()
        strategy = self.head["strategy"]["strategy"]
        seen: IdSet | None = None
        ownerless: list[str] | None = None
        if strategy == strategies.DEVICES_EXPAND:
            seen, ownerless = inv.seen.build(), inv.ownerless
        elif strategy == strategies.USERS_EXPAND:
            # Every device some user owns, plus the direct members found: a stored device outside this set was
            # deleted (or lost its owner). Ownerless devices are not observed without the whole /devices list.
            inv.owned.update(inv.records)
            seen = inv.owned.build()
        inv.seen = inv.owned = IdSetBuilder()
        disabled: set[str] = set()
        if not self.cfg.keep_disabled_users:
            disabled = inv.disabled if strategy == strategies.USERS_EXPAND else await self.reader.disabled_users()
        desired = desired_set(inv.records, self.scope, self.plat, disabled_owners=disabled)
        self.plan_input = PlanInput(desired, inv.records, seen, disabled, ownerless)
        shape = self.head["shape"]
        if strategy == strategies.DEVICES_EXPAND:
            shape["devices"] = inv.devices
        if strategy == strategies.USERS_EXPAND:
            shape["users"] = inv.users
            shape["cappedUsers"] = inv.capped or shape.get("cappedUsers") or 1

    # ---- phases: apply and deactivate -----------------------------------------------------------------------------

    def _facts(self, stored: Mapping[str, Stored]) -> Facts:
        assert self.plan_input is not None
        seen = self.plan_input.seen
        return Facts(
            deleted=frozenset(d for d in stored if seen is not None and d not in seen),
            current=self.plan_input.current,
            platforms=self.plat,
            disabled_owners=frozenset(self.plan_input.disabled),
            unresolved=frozenset(u["name"] for u in self.resolution.unresolved),
        )

    async def _write(self, items: Sequence[PlanItem], stored: Mapping[str, Stored]) -> bool:
        """Apply ``items`` in slices until done (True) or the budget is spent (False)."""
        size = self.budget.slice_size
        for start in range(0, len(items), size):
            if self._keepalive is not None:
                await self._keepalive()
            part = items[start : start + size]
            await self.store.apply(self.tid, part, utc_iso(self.now), previous=stored)
            self.items_applied += part
            for item in part:
                self.head["applied"][item.action] += 1
            self.budget.used_slices += 1
            if start + size < len(items) and self.budget.spent():
                return False
        return True

    async def _apply(self) -> bool:
        assert self.plan_input is not None
        if self.dry_run:
            self.head["phase"] = "deactivate"
            return True
        layout = await self.store.ensure_layout(
            self.tid, max(int(self.head["shape"].get("devices") or 0), len(self.plan_input.desired))
        )
        done: dict[str, int] = self.head["deactivations"]
        before: dict[str, int] = self.head["before"]
        todo = [s for s in range(len(layout.partitions())) if str(s) not in done]
        desired_by_shard: dict[int, dict[str, Desired]] = {}
        for did, want in self.plan_input.desired.items():
            desired_by_shard.setdefault(layout.shard_of(did), {})[did] = want

        async def shard_job(shard: int) -> None:
            stored = await self.store.load_devices(self.tid, shard)
            before.setdefault(str(shard), sum(1 for s in stored.values() if s.state == ENROLLED))
            plan = reconcile(desired_by_shard.get(shard, {}), stored, self._facts(stored))
            if await self._write(plan.without_deactivations().items, stored):
                done[str(shard)] = len(plan.of(DEACTIVATE))

        # Shards in parallel, a few at a time: the store parallelizes the writes inside one apply as well. The first
        # shard that fails (a lost lease, a conflict) cancels the others: a failed step writes nothing more.
        for start in range(0, len(todo), SHARD_WRITE_CONCURRENCY):
            await _together([shard_job(s) for s in todo[start : start + SHARD_WRITE_CONCURRENCY]])
            if self.budget.spent() and len(done) < len(layout.partitions()):
                return False
        if len(done) < len(layout.partitions()):
            return False
        self.head["phase"] = "deactivate"
        return True

    async def _deactivate(self) -> bool:
        assert self.plan_input is not None
        if self.dry_run:
            every = await self.store.load_devices(self.tid)
            plan = reconcile(self.plan_input.desired, every, self._facts(every))
            self.head["before"] = {"0": sum(1 for s in every.values() if s.state == ENROLLED)}
            self.dry_plan = plan
            self.head["phase"] = "commit"
            return True
        enrolled_before = sum(int(v) for v in self.head["before"].values())
        deactivations: list[PlanItem] = []
        stored: dict[str, Stored] = {}
        if sum(int(v) for v in self.head["deactivations"].values()):
            # Shard by shard, keeping only the rows to deactivate (a big tenant's rows never sit in memory at once).
            layout = await self.store.ensure_layout(self.tid, len(self.plan_input.desired))
            by_shard: dict[int, dict[str, Desired]] = {}
            for did, want in self.plan_input.desired.items():
                by_shard.setdefault(layout.shard_of(did), {})[did] = want
            for shard in range(len(layout.partitions())):
                rows = await self.store.load_devices(self.tid, shard)
                plan = reconcile(by_shard.get(shard, {}), rows, self._facts(rows))
                # Whatever a concurrent change left (normally nothing): enrolls and updates first.
                if not await self._write(plan.without_deactivations().items, rows):
                    return False
                for item in plan.of(DEACTIVATE):
                    deactivations.append(item)
                    stored[item.record.id] = rows[item.record.id]
        decision = await self._decide(Plan(tuple(deactivations)), self.resolution, self.scope, enrolled_before)
        self.decision = decision
        if decision.apply_deactivations and deactivations:
            if not await self._write(deactivations, stored):
                return False
        elif not decision.apply_deactivations:
            self.staged_items = deactivations
        self.head["phase"] = "commit"
        self.head["staged"] = decision.staged
        self.head["deactivationsPlanned"] = len(deactivations)
        return True

    # ---- commit ---------------------------------------------------------------------------------------------------

    async def _commit(self) -> FullResult:
        assert self.plan_input is not None
        if self.dry_run:
            plan = self.dry_plan
            enrolled_before = sum(int(v) for v in self.head["before"].values())
            decision = await self._decide(plan, self.resolution, self.scope, enrolled_before)
            to_apply = plan if decision.apply_deactivations else plan.without_deactivations()
            result = self._result(done=True, plan=plan)
            result.decision = decision
            result.staged = decision.staged
            counts = to_apply.counts()
            result.applied = {k: 0 for k in counts}
            result.enrolled = enrolled_before + counts["enroll"] - counts["deactivate"]
            return result
        layout = await self.store.layout(self.tid)
        if layout is not None and not layout.indexed:
            await self.store.backfill_index(self.tid)
        digest = graph_digest(self.graph)
        meta = await self.store.graph_meta(self.tid)
        if meta is None or meta.get("digest") != digest or meta.get("configVersion") != self.cfg.config_version:
            await self.store.save_graph(self.tid, self.graph, {
                "configVersion": self.cfg.config_version, "resolved": self.resolution.resolved,
                "scopeUsers": len(self.scope.users), "savedAt": utc_iso(self.now), "digest": digest,
            })
        result = self._result(done=True)
        decision = self.decision if self.decision is not None else guard.GuardDecision(True, 0, 0)
        result.decision = decision
        result.staged = decision.staged
        applied = self.head["applied"]
        enrolled_before = sum(int(v) for v in self.head["before"].values())
        result.enrolled = enrolled_before + applied["enroll"] - applied["deactivate"]
        return result

    async def clear(self) -> None:
        """Forget the checkpoint (after the cursors and status committed)."""
        if self.persisted:
            await self.store.clear_checkpoint(self.tid)

    def _result(self, *, done: bool, plan: Plan | None = None) -> FullResult:
        pi = self.plan_input
        return FullResult(
            done=done,
            phase=str(self.head["phase"]),
            run=str(self.head["run"]),
            applied=dict(self.head["applied"]),
            plan=plan if plan is not None else Plan(tuple(self.items_applied + self.staged_items)),
            resolution=self.resolution,
            ownerless=pi.ownerless if pi is not None else None,
            desired=len(pi.desired) if pi is not None else 0,
            shape=dict(self.head["shape"]),
            strategy=dict(self.head["strategy"]),
            disabled=pi.disabled if pi is not None else None,
            groups_link=str(self.head["groupsLink"]),
            graph=self.graph,
            scope=self.scope,
            steps=int(self.head.get("steps") or 1),
            staged=int(self.head.get("staged") or 0),
        )


async def _together(jobs: Sequence[Awaitable[None]]) -> None:
    """Run ``jobs`` concurrently; when one fails (or this step is cancelled), cancel the others and wait for them
    before re-raising, so no shard of a failed step keeps writing after it (e.g. once the poll lost its lease)."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _owner_of(obj: Mapping[str, Any]) -> str | None:
    owners = obj.get("registeredOwners") or []
    return str(owners[0]["id"]) if owners else None


_Stage = Callable[[FullReconcile, dict[str, Any]], Awaitable[bool]]
_STAGES: dict[str, list[_Stage]] = {
    strategies.DEVICES_EXPAND: [FullReconcile._devices_with_owners],
    # No /devices list: the expanded devices carry their properties, and direct device members are read by id.
    strategies.USERS_EXPAND: [FullReconcile._users_expand, FullReconcile._direct_members],
    strategies.PER_USER: [FullReconcile._per_user, FullReconcile._direct_members],
}
