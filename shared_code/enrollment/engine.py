"""The poll engine: one tenant, one poll — full reconcile or incremental — get → transform → load → commit cursor.

Full reconcile (first poll, config change, expired delta token, or every ``FULL_RECONCILE_HOURS``):
  1. make sure a ``devices/delta`` round exists (start it now, before reading, so no change falls in a gap);
  2. a new ``groups/delta?$select=displayName,members`` round: every group's direct members (the membership graph);
  3. resolve the configured names with ``$filter`` (quotes doubled); expand nested groups locally;
  4. read devices + owners with the cheapest strategy for the tenant's shape (strategies.py; logged);
  5. reconcile desired vs stored (domain), guard, write rows + events, save the graph, commit cursors last.

Incremental: read ``groups/delta`` and ``devices/delta`` from the committed deltaLinks. Nothing changed → stop: no
table write at all (2 Graph requests). Otherwise apply the membership changes to the stored graph, re-derive scope,
fetch owned devices only for users who *entered* scope and owners only for devices that appeared or changed
platform (``$batch``, 20 per request), reconcile against the stored rows those changes can touch (the rows of the
devices named and of the owners who entered or left scope; the whole partition only while deactivations are staged,
when the disabled-users set changed, or for a change too wide for targeted reads), write, commit cursors last.
Every decision of that path is pure and lives in ``domain.incremental``; ``_incremental`` does the reads in between.
Objects Graph cannot read yet (replication lag) are retried from the groups cursor's pending list
(``domain.pending``); before anything is written both paths pass ``_judge`` (consistency, re-verification, guard).

Crash safety: rows + events are written in per-partition transactions before the graph and the cursors; a poll that
dies anywhere replays the same deltas next time against the (partly) updated rows, and reconcile only emits what
is still missing, so no event is lost or duplicated.

Rules worth knowing (documented for operators):
* Scope: the one rule of ``domain.scope.device_scope`` — platform in the tenant's platforms, and the device itself
  a member of an enrollment tree (with or without an owner) or its registered owner a (transitive) member.
  Ownerless devices that are not members themselves are reported in status ``scope`` (count + sample).
* Disabled users: kept enrolled by default (``keep_disabled_users``); when the tenant opts out, their devices are
  deactivated with reason ``owner disabled`` (one extra ``/users?$filter=accountEnabled eq false`` read per poll).
* Group names resolve like Graph's ``$filter=displayName eq …`` (case-insensitive); a name matching no group or
  several is reported (``scope.unresolvedGroups`` / ``ambiguousGroups``) and contributes nothing.
* What no delta reports — a device's registered owner changing (a navigation property) — is fixed by the scheduled
  full reconcile (``FULL_RECONCILE_HOURS``, default 24 h), which also renews a devices token older than 3 days.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, cast

from shared_code.adapters.graph import GraphClient
from shared_code.adapters.http_retry import UsageMeter
from shared_code.domain import consistency, guard, incremental, pending
from shared_code.domain.devices import (
    DeviceRecord,
    device_from_graph,
    normalize_platforms,
)
from shared_code.domain.reconcile import (
    DEACTIVATE,
    ENROLLED,
    GROUP_UNRESOLVED,
    Plan,
    PlanItem,
    Stored,
)
from shared_code.domain.scope import (
    MembershipGraph,
    Resolution,
    Scope,
    expand_scope,
)
from shared_code.domain.timestamps import utc_iso
from shared_code.enrollment import strategies
from shared_code.enrollment.cursors import DEVICES, GROUPS, Cursor, CursorStore
from shared_code.enrollment.full_reconcile import APPLY_SLICE, STEP_SECONDS, Budget, FullReconcile, walk_new_groups
from shared_code.enrollment.reader import DirectoryReader, KeepAlive
from shared_code.enrollment.status import (
    EnrollmentStatus,
    GuardStatus,
    PendingStatus,
    PollStatus,
    ScopeStatus,
    counts_of,
    guard_of,
    pending_of,
    poll_of,
    scope_of,
)
from shared_code.enrollment.store import EnrollmentStore
from shared_code.errors import ConflictError, CursorExpiredError, InconsistentReadError, NotFoundError
from shared_code.tenants import TenantConfig, TenantRecord, TenantRepository

log = logging.getLogger("connector.enrollment")

# The first devices/delta round of a big tenant pages through every device; its data repeats what the full
# reconcile just read (changes made since the round started replay after its deltaLink), so its pages are only
# walked: in steps of at most this many pages (and the step's time budget), each committing the in-flight nextLink,
# chained by continuation messages until the deltaLink arrives (900 pages for 180k devices: one or two steps).
DEVICE_CATCHUP_PAGES = 2000
# A first devices round this short (in pages after the first) is finished inside the full reconcile.
FINISH_NOW_PAGES = 5
# Directory delta tokens live 7 days (graph.md §4); the daily full reconcile renews an older devices token.
DEVICE_TOKEN_REFRESH_SECONDS = 3 * 24 * 3600
PLAN_SAMPLE = 50
# A full dry run (synchronous, in an HTTP request) is refused above this estimated Graph request count.
DRY_RUN_MAX_REQUESTS = 150
OWNERLESS_SAMPLE = 20

GraphFactory = Callable[[str, UsageMeter], GraphClient]




def disabled_digest(disabled: set[str]) -> str:
    """Short fingerprint of the disabled-users set (status ``scope.disabledDigest``)."""
    return hashlib.sha256("\n".join(sorted(disabled)).encode()).hexdigest()[:32]


_USAGE_ATTRIBUTE = "_connector_poll_usage"


def attach_usage(error: BaseException, usage: dict[str, int]) -> None:
    """Record on a poll's exception what the poll had cost when it failed."""
    setattr(error, _USAGE_ATTRIBUTE, usage)


def usage_of(error: BaseException) -> dict[str, int]:
    """What the failed poll cost (empty when it failed before any Graph call)."""
    usage: dict[str, int] = getattr(error, _USAGE_ATTRIBUTE, {})
    return usage


def approval_token(guard_status: Mapping[str, Any]) -> tuple[Any, ...]:
    """What identifies one approval of staged deactivations (changes with every approval)."""
    return (guard_status.get("approvalId"), guard_status.get("approvedAt"), guard_status.get("approvedPlanId"))


def approved_plan(guard_status: Mapping[str, Any]) -> str | None:
    """The plan id an admin approved while deactivations are staged (None when none is pending)."""
    if guard_status.get("state") != "deactivations_staged":
        return None
    approved = guard_status.get("approvedPlanId")
    return str(approved) if approved else None


@dataclass
class PollOutcome:
    """What one poll did (or, for a dry run, would do)."""

    tenant_id: str
    mode: str  # full | incremental | noop | skipped
    dry_run: bool = False
    plan: Plan = field(default_factory=lambda: Plan(()))
    applied: dict[str, int] = field(default_factory=dict)
    staged: int = 0
    strategy: dict[str, Any] | None = None
    usage: dict[str, int] = field(default_factory=dict)
    unresolved: list[dict[str, Any]] = field(default_factory=list)
    ownerless: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    events_written: int = 0
    desired: int = 0
    enrolled: int = 0
    shape: dict[str, Any] | None = None
    plan_id: str = ""
    # A full reconcile that continues in a later poll (the service enqueues a continuation message).
    continuing: bool = False
    reconcile: dict[str, Any] | None = None
    # The first devices/delta round is still in flight: its next step runs from a continuation message too.
    devices_round: bool = False

    def summary(self, sample: int = PLAN_SAMPLE) -> dict[str, Any]:
        """JSON form (dry-run answer, logs)."""
        return {
            "tenantId": self.tenant_id,
            "mode": self.mode,
            "dryRun": self.dry_run,
            "counts": self.plan.counts(),
            # The ETag of this plan's deactivations: an approval names it (POST …/deactivations/approve).
            "planId": self.plan_id or None,
            "applied": self.applied,
            "staged": self.staged,
            "desired": self.desired,
            "enrolled": self.enrolled,
            "strategy": self.strategy,
            "usage": self.usage,
            "unresolvedGroups": self.unresolved,
            "ownerless": len(self.ownerless) if self.ownerless is not None else None,
            "notes": self.notes,
            # Whether the service should enqueue a continuation (a full reconcile's or the devices round's next step).
            "continuing": self.continuing or self.devices_round,
            "items": [i.to_dict() for i in self.plan.items[:sample]],
            "truncated": len(self.plan.items) > sample,
        }


@dataclass
class _Ctx:
    record: TenantRecord
    reader: DirectoryReader
    meter: UsageMeter
    now: float
    dry_run: bool
    groups_cursor: Cursor
    devices_cursor: Cursor
    outcome: PollOutcome
    keepalive: KeepAlive | None = None
    previous_started: float | None = None  # when the tenant's previous poll started (pending objects' backoff)
    started: float = field(default_factory=time.monotonic)

    @property
    def cfg(self) -> TenantConfig:
        return self.record.config

    @property
    def tenant_id(self) -> str:
        return self.record.config.tenant_id


def _with_owner(found: Mapping[str, Any]) -> DeviceRecord:
    """A device read with ``$expand=registeredOwners`` as a record (Graph allows one owner)."""
    owners = found.get("registeredOwners") or []
    return device_from_graph(dict(found), str(owners[0]["id"]) if owners else None)


def _answered(
    item: pending.Pending,
    owned: Mapping[str, list[dict[str, Any]] | None],
    devices: Mapping[str, dict[str, Any] | None],
) -> bool:
    """Whether a retried pending object is readable now (an owner link: the device answers with an owner)."""
    if item.kind == pending.USER:
        return owned.get(item.id) is not None
    found = devices.get(item.id)
    if found is None:
        return False
    return item.kind == pending.DEVICE or bool(found.get("registeredOwners"))


class _NeedFull(Exception):
    """Incremental poll cannot proceed (no stored graph): run a full reconcile."""


class PollEngine:
    """Runs polls. Stateless between polls (state lives in the stores)."""

    def __init__(
        self,
        *,
        tenants: TenantRepository,
        store: EnrollmentStore,
        cursors: CursorStore,
        graph_factory: GraphFactory,
        clock: Callable[[], float] = time.time,
        full_reconcile_hours: int = 24,
        device_catchup_pages: int = DEVICE_CATCHUP_PAGES,
        dry_run_max_requests: int | None = DRY_RUN_MAX_REQUESTS,
        pending_give_up_hours: float = 24.0,
        step_seconds: float | None = STEP_SECONDS,
        step_pages: int | None = None,
        step_slices: int | None = None,
        apply_slice: int = APPLY_SLICE,
    ) -> None:
        self.tenants = tenants
        self.status = EnrollmentStatus(tenants)
        self.store = store
        self.cursors = cursors
        self._graph_factory = graph_factory
        self._clock = clock
        self._full_hours = full_reconcile_hours
        self._catchup = device_catchup_pages
        self._dry_run_max_requests = dry_run_max_requests
        self._pending_give_up = pending_give_up_hours * 3600.0
        # One poll's share of a full reconcile (time; Graph pages and write slices too, for tests).
        self._step_seconds = step_seconds
        self._step_pages = step_pages
        self._step_slices = step_slices
        self._apply_slice = apply_slice

    async def poll(
        self,
        tenant_id: str,
        *,
        dry_run: bool = False,
        force_full: bool = False,
        keepalive: KeepAlive | None = None,
        previous_started: float | None = None,
        record: TenantRecord | None = None,
    ) -> PollOutcome:
        """Poll one tenant.

        ``keepalive`` runs after every Graph page or ``$batch`` and before the writes (the service renews the
        poll's lease with it; it raises ConflictError when the lease was lost, which stops the poll unwritten).
        ``record`` is the tenant as the caller read it under that lease (one read of the tenant per poll, not two);
        without it the engine reads the tenant itself.

        Raises:
            NotFoundError: the tenant is not provisioned.
            ConsentRequiredError, PermissionMissingError, RetriableError, FatalError: from Graph.
            ConflictError: another worker advanced the tenant meanwhile.
        """
        if record is None:
            record = await self.tenants.get(tenant_id)
        if record is None:
            raise NotFoundError(f"tenant {tenant_id} is not provisioned", status=404)
        outcome = PollOutcome(tenant_id, "skipped", dry_run=dry_run)
        if record.state != "active":
            return outcome
        meter = UsageMeter()
        graph = self._graph_factory(tenant_id, meter)
        try:
            ctx = _Ctx(
                record=record,
                reader=DirectoryReader(graph, keepalive=keepalive),
                meter=meter,
                now=self._clock(),
                dry_run=dry_run,
                groups_cursor=await self.cursors.get(tenant_id, GROUPS),
                devices_cursor=await self.cursors.get(tenant_id, DEVICES),
                outcome=outcome,
                keepalive=keepalive,
                previous_started=previous_started,
            )
            reason = self._full_reason(ctx, force_full)
            if reason is None:
                try:
                    await self._incremental(ctx)
                except CursorExpiredError as exc:
                    reason = f"delta token expired ({exc})"
                    log.warning("tenant %s: %s; running a full reconcile", tenant_id, reason)
                except _NeedFull as exc:
                    reason = str(exc)
            if reason is not None:
                outcome.notes.append(f"full reconcile: {reason}")
                log.info("tenant %s: full reconcile (%s)", tenant_id, reason)
                await self._full(ctx)
            outcome.usage = meter.snapshot()
            if not dry_run and (outcome.mode != "noop" or self._recovering(ctx)):
                # A no-op writes nothing, except the first one after a failure: status must stop saying "failed".
                await self._write_poll_status(ctx)
            return outcome
        except Exception as exc:
            # Keep what the failed poll cost (a 429 storm is exactly when the console wants the figures); the
            # exception keeps its type, which is what decides backoff and the status reason.
            attach_usage(exc, meter.snapshot())
            raise
        finally:
            await graph.aclose()

    # ---- mode selection ---------------------------------------------------------------------------------------

    def _full_reason(self, ctx: _Ctx, force: bool) -> str | None:
        if poll_of(ctx.record).get("reconcile"):
            return "continuing"  # a full reconcile run is in progress: its next step
        if force:
            return "requested"
        if not ctx.groups_cursor.committed:
            return "no committed groups cursor"
        if int(poll_of(ctx.record).get("configVersion") or 0) != ctx.cfg.config_version:
            return "configuration changed"
        if approved_plan(guard_of(ctx.record)) is not None:
            # An approved plan applies only if fresh reads recompute exactly it.
            return "deactivations approved"
        if ctx.now - ctx.groups_cursor.full_at >= self._full_hours * 3600:
            return f"scheduled (every {self._full_hours} h)"
        return None

    # ---- incremental --------------------------------------------------------------------------------------------

    async def _incremental(self, ctx: _Ctx) -> None:
        out = ctx.outcome
        group_pages: list[list[dict[str, Any]]] = []
        groups_link = ""
        async for page in ctx.reader.groups_delta(ctx.groups_cursor.committed):
            group_pages.append(list(page.get("value", ())))
            groups_link = str(page.get("@odata.deltaLink") or groups_link)
        device_changes, devices_cursor = await self._device_deltas(ctx)
        ctx.outcome.devices_round = not devices_cursor.committed and not ctx.dry_run
        guard_status = guard_of(ctx.record)
        staged = guard_status.get("state") == "deactivations_staged"
        need_disabled = not ctx.cfg.keep_disabled_users
        disabled = await ctx.reader.disabled_users() if need_disabled else set()
        digest = disabled_digest(disabled) if need_disabled else None
        # The disabled set is compared with the one the last applied poll saw: unchanged, its devices were dealt
        # with then, and only owners/devices the deltas touch need a look now.
        disabled_changed = need_disabled and digest != scope_of(ctx.record).get("disabledDigest")
        # Objects Graph could not read yet (replication lag): retry the due ones, users and devices mixed in
        # ⌈due/20⌉ $batch requests; give up on those pending past the bound.
        held = pending.decode(ctx.groups_cursor.pending)
        live, gave_up = pending.split(held, ctx.now, self._pending_give_up)
        retry = [p for p in live if pending.due(p, ctx.now, ctx.previous_started)]
        owned_again: dict[str, list[dict[str, Any]] | None] = {}
        devices_again: dict[str, dict[str, Any] | None] = {}
        if retry:
            owned_again, devices_again = await ctx.reader.pending_reads(
                [p.id for p in retry if p.kind == pending.USER], [p.id for p in retry if p.kind != pending.USER]
            )
        answered = [p for p in retry if _answered(p, owned_again, devices_again)]
        changed = any(group_pages) or bool(device_changes) or bool(answered)
        if not changed and not disabled_changed and not gave_up:
            if staged:
                # Nothing changed, but a staged plan is re-checked against Graph every poll (raises _NeedFull when
                # Graph no longer supports it: a fresh full read then restages or clears it).
                await self._recheck_stage(ctx, guard_status)
            await self._noop(ctx, devices_cursor)
            return
        out.mode = "incremental"
        loaded = await self.store.load_graph(ctx.tenant_id)
        if loaded is None:
            raise _NeedFull("no stored membership graph")
        # The decisions are pure (domain.incremental); this method does the reads they ask for, in between.
        shift = incremental.shift_scope(loaded[0], group_pages, list(ctx.cfg.enrollment_groups))
        # The stored graph holds complete member lists only for groups in scope: read any group entering it now
        # (and any in scope whose walk found nothing yet: a group Graph could not read has no node).
        walked = {g for g in shift.old.groups if g in loaded[0].groups}
        if await walk_new_groups(ctx.reader, shift.graph, shift.resolution.resolved, walked):
            shift = replace(shift, graph_changed=True, new=expand_scope(shift.graph, shift.resolution.resolved))
        changes = incremental.fold_device_changes(device_changes)
        plat = normalize_platforms(ctx.cfg.platforms)
        # The guard needs the enrolled count; a partial read takes it from the last applied poll's status.
        counted = counts_of(ctx.record).get("enrolled")
        known_enrolled = counted if isinstance(counted, int) and not isinstance(counted, bool) else None
        rows = incremental.rows_to_read(
            changes, shift, staged=staged, disabled_changed=disabled_changed, known_enrolled=known_enrolled,
            extra_devices=[p.id for p in answered if p.kind != pending.USER],
        )
        if rows.partial:
            stored = await self.store.load_devices_for(
                ctx.tenant_id, device_ids=rows.device_ids, owner_ids=rows.owner_ids
            )
        else:
            stored = await self.store.load_devices(ctx.tenant_id)
        current = incremental.current_records(stored, changes)
        for item in answered:  # Graph answers now for objects it could not read on an earlier poll
            if item.kind == pending.USER:
                for dev in owned_again.get(item.id) or ():
                    current[str(dev["id"])] = device_from_graph(dev, item.id)
            else:
                current[item.id] = _with_owner(devices_again[item.id] or {})
        not_yet: list[pending.Pending] = []
        entering = incremental.entering_owners(shift, stored, disabled if need_disabled else None)
        if entering:
            for uid, devices in (await ctx.reader.owned_devices(entering)).items():
                if devices is None:
                    # A member Graph cannot read yet (404 while the new user replicates): not "no devices".
                    not_yet.append(pending.Pending(uid, pending.USER, ctx.now))
                for dev in devices or ():
                    current[str(dev["id"])] = device_from_graph(dev, uid)
        lookups = incremental.device_lookups(changes, stored, shift, current, plat)
        if lookups:
            for did, found in (await ctx.reader.devices_by_id(lookups)).items():
                if found is None:
                    # The delta or a membership just named it, so it exists: it has not replicated yet (a deletion
                    # comes as @removed in devices/delta).
                    not_yet.append(pending.Pending(did, pending.DEVICE, ctx.now))
                    continue
                current[did] = _with_owner(found)
                if current[did].owner_id is None and did in changes.updated and did not in shift.new.devices:
                    # A device that just appeared can be readable before its owner link is: look again later.
                    not_yet.append(pending.Pending(did, pending.OWNER_LINK, ctx.now))
        if rows.partial:
            # A device found through an entering owner may have a row stored under its previous owner.
            unread = sorted(set(current) - set(stored))
            if unread:
                stored.update(await self.store.load_devices_for(ctx.tenant_id, device_ids=unread, owner_ids=()))
        plan, desired = incremental.plan(current, stored, shift, plat, deleted=changes.deleted, disabled=disabled)
        extra: dict[str, Any] = {"ownerless": None}
        if digest is not None:
            extra["disabledDigest"] = digest
        # Still pending (committed with the groups cursor below): what was not answered, plus what this poll could
        # not read.
        still = pending.after_poll(live, answered, not_yet, shift.new.users)
        pending_changed = still != list(held)
        if pending_changed:
            extra["pending"] = (still, [p for p in gave_up if p.kind != pending.OWNER_LINK])
        if not changed and not plan.items and not pending_changed:
            # Only the disabled-users set changed, and it touched no device: remember it, write nothing else.
            await self._noop(ctx, devices_cursor)
            if disabled_changed and digest is not None and not ctx.dry_run:
                await self.status.scope(ctx.tenant_id, {"disabledDigest": digest})
            return
        out.unresolved = shift.resolution.unresolved
        out.desired = len(desired)
        groups_cursor = replace(ctx.groups_cursor.commit(groups_link, ctx.now), pending=pending.encode(still))
        cursors = {GROUPS: groups_cursor, DEVICES: devices_cursor}
        await self._finish(ctx, plan, stored, shift.graph if shift.graph_changed else None, shift.resolution,
                           shift.new, cursors, extra, enrolled_before=known_enrolled if rows.partial else None)

    async def _noop(self, ctx: _Ctx, devices_cursor: Cursor) -> None:
        """Nothing changed: write nothing (the deltaLinks we hold stay valid and replay nothing)."""
        ctx.outcome.mode = "noop"
        if not ctx.devices_cursor.committed and devices_cursor != ctx.devices_cursor and not ctx.dry_run:
            # Only while the first devices round catches up: progress of the in-flight link.
            await self.cursors.put(ctx.tenant_id, DEVICES, devices_cursor)

    async def _device_deltas(self, ctx: _Ctx) -> tuple[list[dict[str, Any]], Cursor]:
        """Device changes since the committed link; or progress on a first round spread over polls."""
        cur = ctx.devices_cursor
        changes: list[dict[str, Any]] = []
        try:
            if cur.committed:
                link = ""
                async for page in ctx.reader.devices_delta(cur.committed):
                    changes.extend(page.get("value", ()))
                    link = str(page.get("@odata.deltaLink") or link)
                return changes, cur.commit(link, ctx.now)
            return changes, await self._devices_catchup(ctx, cur)
        except CursorExpiredError:
            # The devices token itself is dead: forget it so the full reconcile starts a new devices round
            # (an expired *groups* token leaves the devices cursor alone).
            ctx.devices_cursor = Cursor(generation=cur.generation, etag=cur.etag)
            raise

    async def _devices_catchup(self, ctx: _Ctx, cur: Cursor) -> Cursor:
        """Advance (or start) the first ``devices/delta`` round by one step: until its deltaLink, or at most
        ``device_catchup_pages`` pages, or the step's time budget (the caller commits the in-flight link)."""
        pages = 0
        link: str | None = cur.inflight or None
        budget = Budget(self._step_seconds, self._catchup)
        stream = ctx.reader.devices_delta(link)
        async for page in stream:
            pages += 1
            budget.used_pages += 1
            if page.get("@odata.deltaLink"):
                return cur.commit(str(page["@odata.deltaLink"]), ctx.now)
            link = str(page.get("@odata.nextLink") or "")
            if budget.spent():
                break
        return Cursor(committed="", inflight=link or "", generation=cur.generation, committed_at=cur.committed_at,
                      full_at=cur.full_at, etag=cur.etag)

    # ---- full ---------------------------------------------------------------------------------------------------

    async def _full(self, ctx: _Ctx) -> None:
        """A full reconcile run, or this poll's steps of one (full_reconcile.py); cursors and status commit last."""
        out = ctx.outcome
        out.mode = "full"
        cfg = ctx.cfg
        tid = ctx.tenant_id
        shape_status = poll_of(ctx.record).get("shape") or {}
        users = shape_status.get("users")
        devices = shape_status.get("devices")
        running = None if ctx.dry_run else await self.store.checkpoint(tid)
        if running is None:
            if users is None or devices is None:
                users = await ctx.reader.count("users")
                devices = await ctx.reader.count("devices")
            if ctx.dry_run and self._dry_run_max_requests is not None:
                # A dry run answers inside an HTTP request (the front end cuts it at 230 s): refuse a full read that
                # would take hundreds of pages even at the cheapest strategy (scope unknown yet: assume everyone).
                n_users = int(users if users is not None else 1000)
                least, _ = strategies.choose(strategies.Shape(
                    users=n_users, devices=int(devices if devices is not None else 2000), scope_users=n_users,
                ))
                if least.requests > self._dry_run_max_requests:
                    raise ConflictError(
                        f"a full dry run of this tenant would take about {least.requests} Graph requests (limit "
                        f"{self._dry_run_max_requests}); run POST …/sync?full=true and read the tenant's status "
                        "instead"
                    )
            if not ctx.dry_run:
                await self._refresh_devices_token(ctx)
                if not ctx.devices_cursor.committed and not ctx.devices_cursor.inflight:
                    # Start the devices round before reading anything: changes made while we read are in its link.
                    await self._start_devices_round(ctx, devices)
        run = FullReconcile(
            store=self.store, reader=ctx.reader, config=cfg, now=ctx.now, dry_run=ctx.dry_run,
            budget=Budget(None) if ctx.dry_run else Budget(self._step_seconds, self._step_pages,
                                                                 self._step_slices, self._apply_slice),
            decide=lambda plan, resolution, scope, before: self._judge(ctx, plan, resolution, scope, before),
            keepalive=ctx.keepalive,
        )
        result = await run.run(shape_status, users, devices)
        out.strategy = result.strategy
        out.plan = result.plan
        out.applied = result.applied
        if not result.done:
            out.continuing = True
            out.reconcile = {"run": result.run, "phase": result.phase, "steps": result.steps,
                             "updatedAt": utc_iso(self._clock())}
            out.notes.append(f"full reconcile continues (run {result.run}, phase {result.phase})")
            return
        assert result.resolution is not None and result.decision is not None and result.scope is not None
        # The devices round this run started (or an older one) still in flight: its pages follow in continuations.
        out.devices_round = not ctx.dry_run and not ctx.devices_cursor.committed and bool(ctx.devices_cursor.inflight)
        out.unresolved = result.resolution.unresolved
        out.ownerless = result.ownerless
        out.desired = result.desired
        out.shape = result.shape
        out.staged = result.staged
        out.enrolled = result.enrolled
        if ctx.dry_run:
            return
        # Cursors last: everything the run read is applied (the devices round was persisted when it started).
        groups = ctx.groups_cursor.commit(result.groups_link, ctx.now, full=True)
        await self.cursors.put(tid, GROUPS, groups)
        await run.clear()
        extra: dict[str, Any] = {"ownerless": result.ownerless}
        if not cfg.keep_disabled_users:
            extra["disabledDigest"] = disabled_digest(result.disabled or set())
        await self._write_scope_and_guard(ctx, result.decision, result.plan, result.resolution, extra)

    async def _refresh_devices_token(self, ctx: _Ctx) -> None:
        """Keep the devices deltaLink inside its 7-day life: a quiet tenant never commits a new one otherwise.

        Runs before the full read, so whatever the skipped changes were, the full read covers them and the new
        link covers everything after. An already dead token is dropped (a new round starts).
        """
        cur = ctx.devices_cursor
        if not cur.committed or ctx.now - cur.committed_at < DEVICE_TOKEN_REFRESH_SECONDS:
            return
        link = ""
        try:
            async for page in ctx.reader.devices_delta(cur.committed):
                link = str(page.get("@odata.deltaLink") or link)
        except CursorExpiredError:
            log.warning("tenant %s: devices delta token expired; starting a new devices round", ctx.tenant_id)
            ctx.devices_cursor = Cursor(generation=cur.generation, etag=cur.etag)
            return
        ctx.devices_cursor = await self.cursors.put(ctx.tenant_id, DEVICES, cur.commit(link, ctx.now))

    async def _start_devices_round(self, ctx: _Ctx, expected_devices: int | None) -> Cursor:
        """Start a new devices round and persist where it stands (in-flight or committed).

        The round is finished now when it looks short (≤ ``FINISH_NOW_PAGES`` more pages, judged from the first
        page's size and the tenant's device count); otherwise later polls continue it from the in-flight link.
        """
        cur = replace(ctx.devices_cursor, committed="", inflight="", generation=ctx.devices_cursor.generation + 1)
        new = cur
        pages = 0
        limit = 1
        async for page in ctx.reader.devices_delta(None):
            pages += 1
            if page.get("@odata.deltaLink"):
                new = cur.commit(str(page["@odata.deltaLink"]), ctx.now)
                break
            new = replace(cur, inflight=str(page.get("@odata.nextLink") or ""))
            if pages == 1:
                size = max(1, len(page.get("value", ())))
                remaining = math.ceil(max(0, (expected_devices or 10**9) - size) / size)
                limit = 1 + remaining if remaining <= FINISH_NOW_PAGES else 1
            if pages >= limit:
                break
        if new is not cur:
            ctx.devices_cursor = await self.cursors.put(ctx.tenant_id, DEVICES, new)
        return ctx.devices_cursor

    # ---- shared -------------------------------------------------------------------------------------------------

    async def _finish(
        self,
        ctx: _Ctx,
        plan: Plan,
        stored: Mapping[str, Stored],
        graph: MembershipGraph | None,
        resolution: Resolution,
        scope: Scope,
        cursors: dict[str, Cursor],
        extra: dict[str, Any],
        *,
        enrolled_before: int | None = None,
    ) -> None:
        """Judge (consistency, re-verification, guard: ``_judge``), write rows + events, graph, cursors, status.

        Both poll paths end here, so no deactivation reaches storage without the same judgement; a rewritten path
        must call this too. ``enrolled_before``: when ``stored`` is partial.
        """
        out = ctx.outcome
        cfg = ctx.cfg
        out.plan = plan
        if enrolled_before is None:
            enrolled_before = sum(1 for s in stored.values() if s.state == ENROLLED)
        decision = await self._judge(ctx, plan, resolution, scope, enrolled_before)
        to_apply = plan if decision.apply_deactivations else plan.without_deactivations()
        out.staged = decision.staged
        counts = to_apply.counts()
        out.enrolled = enrolled_before + counts["enroll"] - counts["deactivate"]
        if ctx.dry_run:
            out.applied = {k: 0 for k in counts}
            return
        if ctx.keepalive is not None:
            await ctx.keepalive()
        events = await self.store.apply(ctx.tenant_id, to_apply.items, utc_iso(ctx.now), previous=stored)
        out.events_written = len(events)
        out.applied = counts
        if graph is not None:
            meta = {"configVersion": cfg.config_version, "resolved": resolution.resolved,
                    "scopeUsers": len(scope.users), "savedAt": utc_iso(ctx.now)}
            await self.store.save_graph(ctx.tenant_id, graph, meta)
        # Cursors last: everything the deltas described is applied.
        for stream in (DEVICES, GROUPS):
            new = cursors[stream]
            old = ctx.groups_cursor if stream == GROUPS else ctx.devices_cursor
            if new != old and (new.committed or new.inflight):
                await self.cursors.put(ctx.tenant_id, stream, new)
        await self._write_scope_and_guard(ctx, decision, plan, resolution, extra)

    async def _judge(
        self, ctx: _Ctx, plan: Plan, resolution: Resolution, scope: Scope, enrolled_before: int
    ) -> guard.GuardDecision:
        """Check the read, re-verify the plan's deactivations against Graph, and ask the guard (both paths).

        Raises:
            _NeedFull: (incremental) the stored membership data disagrees with Graph; a full read decides.
            InconsistentReadError: (full) this poll's own reads contradict each other; nothing was written.
        """
        cfg = ctx.cfg
        deactivations = plan.of(DEACTIVATE)
        try:
            consistency.check_scope(scope)
            targets = consistency.verification_targets(deactivations)
            wrong = await self._contradicted(ctx, list(targets.items), set(resolution.resolved.values()))
            if wrong:
                raise consistency.InconsistentRead(
                    f"{len(wrong)} planned deactivation(s) contradicted by Graph (e.g. {wrong[0].record.id}: "
                    f"{wrong[0].reason}, but still in an enrollment group)"
                )
        except consistency.InconsistentRead as exc:
            self._inconsistent(ctx, str(exc))
        protected = sum(1 for i in deactivations if i.cause == GROUP_UNRESOLVED)
        if not targets.complete:
            protected += len(deactivations)
        ctx.outcome.plan_id = consistency.plan_id(deactivations)
        return guard.evaluate(
            len(deactivations),
            enrolled_before,
            max_count=cfg.guard_max_deactivations,
            max_percent=cfg.guard_max_percent,
            protected=protected,
            plan_id=ctx.outcome.plan_id,
            approved_plan_id=approved_plan(guard_of(ctx.record)),
        )

    @staticmethod
    def _inconsistent(ctx: _Ctx, message: str) -> None:
        """A contradiction: incremental polls fall back to a full read (the stored graph may be what is stale); a
        full read that contradicts itself fails the poll as retriable, writing nothing."""
        log.warning("tenant %s: inconsistent read (%s): %s", ctx.tenant_id, ctx.outcome.mode, message)
        if ctx.outcome.mode == "incremental":
            raise _NeedFull(f"inconsistent read: {message}")
        raise InconsistentReadError(message)

    async def _contradicted(self, ctx: _Ctx, items: list[PlanItem], roots: set[str]) -> list[PlanItem]:
        """The deactivations among ``items`` that a second, independent Graph read says are still in scope.

        Reads (``$batch`` of 20): each device with its registered owner, the ``transitiveMemberOf`` of those owners
        and of devices that were in scope as members, and the names of groups that no longer resolved.
        """
        if not items:
            return []
        device_ids, direct, names = consistency.reads_needed(items)
        devices: dict[str, DeviceRecord | None] = {}
        for did, obj in (await ctx.reader.devices_by_id(device_ids)).items():
            owners = (obj or {}).get("registeredOwners") or []
            devices[did] = device_from_graph(obj, str(owners[0]["id"]) if owners else None) if obj else None
        owners_now = sorted({r.owner_id for r in devices.values() if r is not None and r.owner_id})
        member_of: dict[str, set[str] | None] = await ctx.reader.member_of(owners_now, direct)
        again: set[str] = set()
        for name in names:
            found = await ctx.reader.groups_named(name)
            if len(found) == 1:
                again.add(name)
                roots.add(found[0])
        read = consistency.SecondRead(devices, member_of, roots, normalize_platforms(ctx.cfg.platforms), again)
        return consistency.unsupported(items, read)

    async def _recheck_stage(self, ctx: _Ctx, guard_status: Mapping[str, Any]) -> None:
        """While deactivations are staged, every poll re-checks them cheaply against Graph.

        The staged sample (≤ ``consistency.VERIFY_SAMPLE`` of the membership-derived rows: their owners', devices'
        and groups' current memberships) is re-read; when Graph no longer supports any of it the stage is stale and
        a full read recomputes the plan now (``_NeedFull``). Otherwise the check is recorded (``lastCheckedAt``).
        """
        items = [PlanItem.from_dict(d) for d in guard_status.get("sample") or () if isinstance(d, dict)]
        targets = consistency.verification_targets(items, limit=consistency.VERIFY_SAMPLE)
        resolved = scope_of(ctx.record).get("resolvedGroups") or {}
        wrong = await self._contradicted(ctx, list(targets.items), {str(v) for v in resolved.values()})
        if wrong:
            raise _NeedFull(f"{len(wrong)} staged deactivation(s) no longer supported by Graph")
        if not ctx.dry_run:
            await self.status.guard(ctx.tenant_id, {
                "lastCheckedAt": utc_iso(ctx.now), "lastCheck": f"{len(targets.items)} staged row(s) still supported",
            })

    async def _write_scope_and_guard(
        self,
        ctx: _Ctx,
        decision: guard.GuardDecision,
        plan: Plan,
        resolution: Resolution,
        extra: dict[str, Any],
    ) -> None:
        tid = ctx.tenant_id
        out = ctx.outcome
        scope_patch: ScopeStatus = {
            "unresolvedGroups": [u for u in resolution.unresolved if u["reason"] == "not_found"],
            "ambiguousGroups": [u for u in resolution.unresolved if u["reason"] == "ambiguous"],
            "resolvedGroups": resolution.resolved,
            "updatedAt": utc_iso(ctx.now),
        }
        if extra.get("disabledDigest") is not None:
            scope_patch["disabledDigest"] = extra["disabledDigest"]
        ownerless = extra.get("ownerless")
        if ownerless is not None:
            scope_patch["ownerlessDevices"] = len(ownerless)
            scope_patch["ownerlessSample"] = ownerless[:OWNERLESS_SAMPLE]
        await self.status.scope(tid, scope_patch)
        if "pending" in extra:
            still, gave_up = extra["pending"]
            section = cast(PendingStatus, pending.status(still, ctx.now, gave_up))
            before = pending_of(ctx.record)
            # Given-up objects stay reported until the console has seen them (a running total and the latest sample).
            section["gaveUp"] = int(before.get("gaveUp") or 0) + len(gave_up)
            if not gave_up:
                section["gaveUpSample"] = before.get("gaveUpSample") or []
            await self.status.pending(tid, section)
            if gave_up:
                log.warning("tenant %s: gave up on %d object(s) Graph never answered for: %s", tid, len(gave_up),
                            [p.id for p in gave_up[:5]])
        previous = guard_of(ctx.record)
        if decision.staged:
            sample = [i.to_dict() for i in plan.of(DEACTIVATE)[:PLAN_SAMPLE]]
            now = utc_iso(ctx.now)
            same_plan = previous.get("state") == "deactivations_staged" and previous.get("planId") == out.plan_id
            patch: GuardStatus = {
                "state": "deactivations_staged", "staged": decision.staged, "threshold": decision.threshold,
                "why": decision.why, "planId": out.plan_id,
                "stagedAt": previous.get("stagedAt") if same_plan else now, "lastCheckedAt": now,
                "configVersion": ctx.cfg.config_version, "sample": sample,
                # An approval names one plan; it is consumed by the poll that recomputed the plan (applied when the
                # ids matched, else the new plan is staged and needs its own approval).
                "approvedPlanId": None,
            }
            # This poll decided from the guard section it read when it started. An approval that landed since
            # (POST …/deactivations/approve while we ran) is not ours to clear: keep it for the poll it enqueued.
            latest = await self.tenants.get(tid)
            current = latest.status.get("guard", {}) if latest is not None else {}
            if approval_token(current) != approval_token(previous):
                del patch["approvedPlanId"]
                log.info("tenant %s: an approval arrived during this poll; it is kept for the next poll", tid)
            await self.status.guard(tid, patch)
            out.notes.append(f"guard: {decision.staged} deactivations staged ({decision.why}; threshold "
                             f"{decision.threshold}; plan {out.plan_id})")
            log.warning("tenant %s: %d deactivations staged (%s, threshold %d, plan %s)", tid, decision.staged,
                        decision.why, decision.threshold, out.plan_id)
        elif previous.get("state") == "deactivations_staged":
            await self.status.guard(tid, {
                "state": "clear", "staged": 0, "approvedPlanId": None, "planId": None, "releasedAt": utc_iso(ctx.now),
                "lastCheckedAt": utc_iso(ctx.now),
                "released": "approved" if decision.approved else "the current plan no longer needs approval",
            })

    @staticmethod
    def _recovering(ctx: _Ctx) -> bool:
        """Whether the last recorded poll failed (the next successful one records its outcome, even a no-op)."""
        poll_status = poll_of(ctx.record)
        return poll_status.get("result") == "failed" or poll_status.get("lastError") is not None

    async def _write_poll_status(self, ctx: _Ctx) -> None:
        out = ctx.outcome
        if out.mode == "noop":
            # A no-op after a failure: the outcome and its cost; mode, counts and shape stay from the last applied poll.
            await self.status.poll(ctx.tenant_id, {
                "result": "ok", "lastError": None, "lastNoopAt": utc_iso(ctx.now),
                "finishedAt": utc_iso(self._clock()),
                "requests": out.usage.get("requests", 0),
                "resourceUnits": out.usage.get("resourceUnits", 0),
                "throttled": out.usage.get("throttled", 0),
                "retries": out.usage.get("retries", 0),
            })
            return
        patch: PollStatus = {
            "mode": out.mode,
            "startedAt": utc_iso(ctx.now),
            "finishedAt": utc_iso(self._clock()),
            "durationMs": int((time.monotonic() - ctx.started) * 1000),
            "requests": out.usage.get("requests", 0),
            "resourceUnits": out.usage.get("resourceUnits", 0),
            "throttled": out.usage.get("throttled", 0),
            "retries": out.usage.get("retries", 0),
            "result": "ok",
            "counts": {**out.applied, "staged": out.staged, "enrolled": out.enrolled, "desired": out.desired},
            "configVersion": ctx.cfg.config_version,
            "lastError": None,
        }
        if out.strategy is not None:
            patch["strategy"] = out.strategy["strategy"]
        if out.mode == "full":
            # A run in progress is named here (the next poll continues it); None once it finished.
            patch["reconcile"] = out.reconcile
            if out.continuing:
                # Counts, shape and lastFullAt stay from the last finished reconcile until this run finishes.
                del patch["counts"]
                await self.status.poll(ctx.tenant_id, patch)
                return
            patch["lastFullAt"] = utc_iso(ctx.now)
        if out.shape is not None:
            patch["shape"] = out.shape
        await self.status.poll(ctx.tenant_id, patch)
        # The console's summary (status.counts in the tenant document).
        await self.status.counts(ctx.tenant_id, {
            "enrolled": out.enrolled, "stagedDeactivations": out.staged, "updatedAt": patch["finishedAt"],
        })
