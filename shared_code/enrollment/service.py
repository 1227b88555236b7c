"""The enrollment feature's one service: fan-out, the guarded per-tenant poll, and what the HTTP routes read.

Built once per container with :func:`build_enrollment_service` (``container().service(build_enrollment_service)``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, cast

from shared_code.bootstrap import Container
from shared_code.connector_status import ConnectorStatus
from shared_code.domain.ids import is_guid
from shared_code.domain.timestamps import utc_iso
from shared_code.enrollment import quarantine
from shared_code.enrollment.cursors import DEVICES, CursorStore, TableCursorStore
from shared_code.enrollment.engine import PollEngine, PollOutcome, usage_of
from shared_code.enrollment.leases import Lease, LeaseStore, SyncRequest, TableLeaseStore
from shared_code.enrollment.status import (
    EnrollmentStatus,
    GuardStatus,
    QuarantineStatus,
    config_of,
    guard_of,
    poll_of,
    quarantine_of,
)
from shared_code.enrollment.store import EnrollmentStore, TableEnrollmentStore
from shared_code.errors import (
    ConfigInvalidError,
    ConflictError,
    ConnectorCredentialError,
    NotFoundError,
    RetriableError,
    ValidationError,
)
from shared_code.tenant_config import CONFIG_INVALID, config_invalid, config_problem
from shared_code.tenants import TenantRecord, TenantRepository

log = logging.getLogger("connector.enrollment")

# A poll takes its tenant's lease for this long and renews it (ETag compare-and-swap) between Graph pages once a
# third of it has passed, so a long full reconcile under 429s keeps it however long it runs. It is also at least
# host.json's functionTimeout (10 min; a unit test ties the two): a worker killed at the timeout, or crashed, frees
# the tenant at most this long after its last renewal.
LEASE_SECONDS = 15 * 60
LEASE_RENEW_SECONDS = LEASE_SECONDS // 3
MAX_PAGE = 1000
# A dry run answers synchronously; Azure's front end drops HTTP requests after 230 s.
DRY_RUN_SECONDS = 120.0
# A console-requested poll that finds the lease held waits this long before it looks again, at most MAX_REQUEUES
# times (30 min: longer than LEASE_SECONDS, so a lease a crashed worker left behind has expired by then). Past that
# it is dropped with an error log; an approval is not lost even then (it stays in status ``guard`` and the next
# scheduled poll applies it).
REQUEUE_DELAY_SECONDS = 60
MAX_REQUEUES = 30
# A console sync request not served within this long was lost (its message dropped after MAX_REQUEUES, or the queue
# failed): a new request is enqueued instead of collapsing into it.
PENDING_SYNC_SECONDS = REQUEUE_DELAY_SECONDS * MAX_REQUEUES + LEASE_SECONDS
DISPATCH_CONCURRENCY = 32
# The reason of a continuation message (the next step of a full reconcile run); a held lease acknowledges it, since
# the poll holding it continues the same run.
CONTINUE_REASON = "continue"
_CURSOR_PREFIX = "ev2."
_LEGACY_CURSOR_PREFIX = "ev1."
# A cursor holds one position per partition of the tenant (≤ MAX_SHARDS, a few bytes each).
MAX_CURSOR_CHARS = 256


@dataclass(frozen=True)
class PollMessage:
    """One ``tenant-polls`` queue message (explicit JSON; the queue client base64-encodes it).

    ``requeues`` counts how often a console-requested message was put back because a poll held the lease.
    """

    tenant_id: str
    reason: str = "scheduled"
    full: bool = False
    enqueued_at: float = 0.0
    requeues: int = 0

    def to_json(self) -> str:
        """Serialize."""
        data: dict[str, Any] = {
            "tenant_id": self.tenant_id, "reason": self.reason, "full": self.full, "enqueued_at": self.enqueued_at,
        }
        if self.requeues:
            data["requeues"] = self.requeues
        return json.dumps(data)

    @classmethod
    def from_json(cls, body: str | bytes) -> PollMessage:
        """Parse and validate; every field is type-checked (``"full": "false"`` is an error, not ``True``).

        Raises:
            ValidationError: not UTF-8 JSON, no valid ``tenant_id``, or a field of the wrong type.
        """
        try:
            text = body.decode("utf-8") if isinstance(body, bytes) else body
            data = json.loads(text)
        except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise ValidationError("poll message is not UTF-8 JSON", field="body") from None
        if not isinstance(data, dict):
            raise ValidationError("poll message is not a JSON object", field="body")
        tenant_id = data.get("tenant_id")
        if not isinstance(tenant_id, str) or not is_guid(tenant_id):
            raise ValidationError("poll message needs a tenant_id GUID", field="tenant_id")
        reason = data.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise ValidationError("poll message reason must be a string", field="reason")
        full = data.get("full")
        if full is not None and not isinstance(full, bool):
            raise ValidationError("poll message full must be a JSON boolean", field="full")
        return cls(
            tenant_id=tenant_id,
            reason=(reason or "scheduled")[:64],
            full=bool(full),
            enqueued_at=_number(data, "enqueued_at"),
            requeues=int(_number(data, "requeues")),
        )


def _number(data: dict[str, Any], name: str) -> float:
    """A finite, non-negative JSON number field (absent or null → 0)."""
    value = data.get(name)
    if value is None:
        return 0.0
    try:
        number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    except OverflowError:  # a JSON integer too large for a float
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise ValidationError(f"poll message {name} must be a non-negative number", field=name)
    return number


def _varints(values: Sequence[int]) -> bytes:
    out = bytearray()
    for value in values:
        while True:
            byte = value & 0x7F
            value >>= 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                break
    return bytes(out)


def _unvarints(data: bytes) -> list[int]:
    out: list[int] = []
    value = shift = 0
    for byte in data:
        value |= (byte & 0x7F) << shift
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")
        if not byte & 0x80:
            out.append(value)
            value = shift = 0
    if shift:
        raise ValueError("truncated varint")
    return out


def encode_event_cursor(tenant_id: str, position: Sequence[int]) -> str:
    """Opaque change-feed cursor: the per-partition positions, bound to the tenant (another tenant's is unknown)."""
    raw = bytes.fromhex(tenant_id[:8]) + _varints(position)
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_event_cursor(tenant_id: str, cursor: str) -> list[int]:
    """Per-partition positions of a cursor (a single-partition ``ev1.`` cursor of before sharding is one position).

    Raises:
        ValidationError: malformed, or issued for another tenant.
    """
    if len(cursor) > MAX_CURSOR_CHARS:
        raise ValidationError("unknown cursor", field="after")
    try:
        if cursor.startswith(_LEGACY_CURSOR_PREFIX):
            body = cursor[len(_LEGACY_CURSOR_PREFIX) :]
            prefix, seq = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode().split(":")
            if prefix != tenant_id[:8] or int(seq) < 0:
                raise ValueError("foreign cursor")
            return [int(seq)]
        if not cursor.startswith(_CURSOR_PREFIX):
            raise ValueError("unknown prefix")
        body = cursor[len(_CURSOR_PREFIX) :]
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        if raw[:4] != bytes.fromhex(tenant_id[:8]) or len(raw) < 5:
            raise ValueError("foreign cursor")
        return _unvarints(raw[4:])
    except (ValueError, UnicodeDecodeError):
        raise ValidationError("unknown cursor", field="after") from None


class QueueSend(Protocol):
    """Put a message on the poll queue, invisible for ``delay_seconds`` (the queue's visibility_timeout on send)."""

    def __call__(self, body: str, delay_seconds: int = 0, /) -> Awaitable[None]:
        """Send."""
        ...


class _LeaseKeeper:
    """Renews a poll's lease every ``LEASE_RENEW_SECONDS`` while the poll reads (called between pages)."""

    def __init__(self, leases: LeaseStore, lease: Lease, clock: Callable[[], float]) -> None:
        self.lease = lease
        self._leases = leases
        self._clock = clock
        self._renewed_at = lease.started_at

    async def keepalive(self) -> None:
        """Renew when due.

        Raises:
            ConflictError: the lease expired and another worker took it; this poll must stop before writing.
        """
        now = self._clock()
        if now - self._renewed_at < LEASE_RENEW_SECONDS:
            return
        renewed = await self._leases.renew(self.lease, LEASE_SECONDS, now)
        if renewed is None:
            raise ConflictError(f"tenant {self.lease.tenant_id}: poll lease lost")
        self.lease, self._renewed_at = renewed, now


class EnrollmentService:
    """Fan-out, guarded polls, and the console's reads/actions for enrollment."""

    def __init__(
        self,
        *,
        tenants: TenantRepository,
        store: EnrollmentStore,
        cursors: CursorStore,
        leases: LeaseStore,
        engine: PollEngine,
        send: QueueSend,
        clock: Callable[[], float] = time.time,
        quarantine_after: int = 5,
        default_interval_minutes: int = 5,
        dry_run_seconds: float = DRY_RUN_SECONDS,
        connector_status: ConnectorStatus | None = None,
    ) -> None:
        self.tenants = tenants
        self.status = EnrollmentStatus(tenants)
        self.connector_status = connector_status
        self.store = store
        self.cursors = cursors
        self.leases = leases
        self.engine = engine
        self._send = send
        self._clock = clock
        self._quarantine_after = quarantine_after
        self._default_interval = default_interval_minutes
        self._dry_run_seconds = dry_run_seconds
        self._worker = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._dry_runs: dict[tuple[str, bool], asyncio.Future[dict[str, Any]]] = {}

    # ---- fan-out --------------------------------------------------------------------------------------------

    async def dispatch(self) -> list[str]:
        """Enqueue one poll message per active tenant that is due; returns the ids enqueued.

        A tenant whose status cannot be read, or whose message cannot be sent, is skipped this tick (logged);
        nothing one tenant does stops the others.
        """
        now = self._clock()
        leases = await self.leases.all()
        due: list[str] = []
        for record in await self.tenants.list_active():
            tid = record.config.tenant_id
            if config_invalid(record) is not None:
                continue  # nothing to retry until the console PUTs a valid configuration
            info = leases.get(tid)
            if quarantine.is_due(
                now,
                interval_minutes=record.config.poll_interval_minutes or self._default_interval,
                last_started=info.last_started if info else 0.0,
                holder_expires_at=info.expires_at if info and info.holder else 0.0,
                quarantine=dict(quarantine_of(record)),
            ):
                due.append(tid)
        # Bounded concurrency: a fleet of thousands of tenants is enqueued in seconds, not minutes.
        enqueued: list[str] = []
        for start in range(0, len(due), DISPATCH_CONCURRENCY):
            chunk = due[start : start + DISPATCH_CONCURRENCY]
            results = await asyncio.gather(
                *(self._send(PollMessage(t, "scheduled", enqueued_at=now).to_json()) for t in chunk),
                return_exceptions=True,
            )
            for tid, result in zip(chunk, results, strict=True):
                if isinstance(result, BaseException):
                    # One failed send must not cost the rest of the fleet its tick; the tenant is due again next tick.
                    log.warning("dispatch_polls: could not enqueue tenant %s: %s", tid, type(result).__name__,
                                exc_info=result)
                else:
                    enqueued.append(tid)
        log.info("dispatch_polls: %d tenant(s) due, %d enqueued", len(due), len(enqueued))
        return enqueued

    async def handle_message(self, body: str | bytes) -> dict[str, Any]:
        """Run the poll a queue message asks for (never raises for a tenant's own failure).

        A scheduled message that finds the lease held is simply acknowledged (the running poll does its job). A
        console-requested one (manual sync, full sync, approved deactivations) is put back on the queue, invisible
        for ``REQUEUE_DELAY_SECONDS``, with its original ``enqueued_at``: the running poll may have read the tenant
        before the request, so only a poll that *starts* after it serves it.

        Raises:
            ValidationError: the message is malformed (the queue job acknowledges and logs it).
        """
        message = PollMessage.from_json(body)
        result = await self.run_poll(
            message.tenant_id, force_full=message.full, reason=message.reason, enqueued_at=message.enqueued_at
        )
        if result.get("continuing"):
            # This poll's share of a full reconcile is committed and its lease released: the next step runs as soon
            # as a worker takes this message. A lost message only waits for the next scheduled poll, which continues
            # the same run (status ``poll.reconcile``); a duplicate finds the lease held, or takes one more step of the
            # same run; if this send fails, the message is redelivered and takes the next step itself (run_poll).
            await self._send(PollMessage(message.tenant_id, CONTINUE_REASON, enqueued_at=self._clock()).to_json())
            log.info("tenant %s: the poll's work continues in the next message", message.tenant_id)
        if result["result"] == "busy" and message.reason not in ("scheduled", CONTINUE_REASON):
            if message.requeues >= MAX_REQUEUES:
                log.error("tenant %s: %s poll dropped after %d requeues behind a held lease", message.tenant_id,
                          message.reason, message.requeues)
                return {**result, "requeued": False}
            again = replace(message, requeues=message.requeues + 1)
            await self._send(again.to_json(), REQUEUE_DELAY_SECONDS)
            log.info("tenant %s: %s poll requeued behind the running poll (%d)", message.tenant_id, message.reason,
                     again.requeues)
            return {**result, "requeued": True}
        return result

    async def run_poll(
        self, tenant_id: str, *, force_full: bool = False, reason: str = "", enqueued_at: float = 0.0
    ) -> dict[str, Any]:
        """Take the tenant's lease, poll, record success or the failure streak, release the lease.

        A message is served by any poll that *started* after it was enqueued: queues deliver at least once, so a
        copy redelivered after its poll finished (a lapsed visibility timeout, a failed delete) is acknowledged
        without polling again. A forced full reconcile is never skipped this way, nor is any message while a full
        reconcile run is open and unheld (its next step is due; the continuation may never have been sent).
        """
        now = self._clock()
        lease = await self.leases.acquire(tenant_id, self._worker, LEASE_SECONDS, now)
        if lease is None:
            log.info("tenant %s: poll already running elsewhere; message acknowledged", tenant_id)
            return {"tenantId": tenant_id, "result": "busy"}
        if enqueued_at and not force_full and lease.previous_started >= enqueued_at:
            # Unless a full reconcile run is still open: the poll that started after this message may have committed
            # its step and then failed to send the continuation (the host redelivers this message), and nothing but
            # a scheduled poll would take the run's next step. A copy of a continuation then takes one extra step of
            # the same run (bounded, resumable); the lease keeps the steps serial.
            try:
                current = await self.tenants.get(tenant_id)
            except BaseException:
                await self.leases.release(replace(lease, started_at=lease.previous_started), self._clock())
                raise
            if current is None or not await self._work_open(current):
                log.info("tenant %s: a poll started after this message was enqueued; acknowledged", tenant_id)
                # Give the lease back without moving last_started: this message did not poll.
                await self.leases.release(replace(lease, started_at=lease.previous_started), self._clock())
                return {"tenantId": tenant_id, "result": "served"}
            log.info("tenant %s: a full reconcile run or devices round is open and no poll holds it; taking its "
                     "next step", tenant_id)
        keeper = _LeaseKeeper(self.leases, lease, self._clock)
        try:
            record = await self.tenants.get(tenant_id)
            if record is None or record.state != "active":
                return {"tenantId": tenant_id, "result": "not_active"}
            problem = config_problem(record.config)
            if problem is not None:
                return await self._record_config_invalid(record, problem)
            read: TenantRecord | None = record  # the engine polls from this read (a quiet poll reads it once)
            if config_of(record).get("state") == CONFIG_INVALID:
                await self.status.config(tenant_id, {
                    "state": "valid", "field": None, "detail": None, "clearedAt": utc_iso(self._clock()),
                })
                read = None  # changed since: the engine reads it again
            try:
                outcome = await self.engine.poll(tenant_id, force_full=force_full, keepalive=keeper.keepalive,
                                                 previous_started=lease.previous_started or None, record=read)
            except ConflictError as exc:
                log.warning("tenant %s: %s; stopping this poll", tenant_id, exc)
                # A step of a full reconcile run that stopped on a conflict leaves the run's checkpoint as it was:
                # its next step re-plans from there, so the run goes on (``continuing``) rather than wait for the timer.
                return {"tenantId": tenant_id, "result": "conflict",
                        "continuing": bool(poll_of(record).get("reconcile"))}
            except Exception as exc:  # noqa: BLE001 - any failure is this tenant's alone: record it, never rethrow
                return await self._record_failure(record, exc, usage_of(exc))
            if self.connector_status is not None:
                await self.connector_status.succeeded()
            patch = quarantine.after_success(dict(quarantine_of(record)), self._clock())
            if patch is not None:
                # (The poll section's own recovery — result ok, lastError cleared — is the engine's write.)
                await self.status.quarantine(tenant_id, cast(QuarantineStatus, patch))
            log.info("tenant %s: poll %s (%s) %s", tenant_id, outcome.mode, reason, outcome.summary(0)["counts"])
            return {"tenantId": tenant_id, "result": "ok", **outcome.summary(0)}
        finally:
            await self.leases.release(keeper.lease, self._clock())

    async def _work_open(self, record: TenantRecord) -> bool:
        """Whether the tenant has unfinished stepwise work: a full reconcile run, or a first devices round in flight
        (read only for a message a later poll already served: a redelivery, or a continuation's copy)."""
        if poll_of(record).get("reconcile"):
            return True
        devices = await self.cursors.get(record.config.tenant_id, DEVICES)
        return not devices.committed and bool(devices.inflight)

    async def _record_config_invalid(self, record: TenantRecord, problem: ValidationError) -> dict[str, Any]:
        """A stored configuration the poll cannot use: record ``config_invalid`` naming the field, once per config
        version, and stop — no Graph call, no failure streak, no quarantine (retrying cannot fix it; a PUT can)."""
        tid = record.config.tenant_id
        result = {"tenantId": tid, "result": CONFIG_INVALID, "field": problem.field}
        if config_invalid(record) is not None:
            return result
        log.error("connector.tenant.config_invalid tenant=%s field=%s: %s", tid, problem.field, problem)
        await self.status.config(tid, {
            "state": CONFIG_INVALID, "field": problem.field, "detail": str(problem),
            "configVersion": record.config.config_version, "since": utc_iso(self._clock()),
        })
        return result

    async def _record_failure(
        self, record: TenantRecord, exc: BaseException, usage: dict[str, int]
    ) -> dict[str, Any]:
        tid = record.config.tenant_id
        now = self._clock()
        if isinstance(exc, ConnectorCredentialError):
            return await self._record_connector_failure(record, exc, usage)
        patch = quarantine.after_failure(
            dict(quarantine_of(record)),
            exc,
            now,
            interval_minutes=record.config.poll_interval_minutes or self._default_interval,
            quarantine_after=self._quarantine_after,
        )
        log.warning("tenant %s: poll failed (%s); %s, failure %d", tid, patch["reason"], patch["state"],
                    patch["failures"], exc_info=not isinstance(exc, ConflictError))
        if patch["state"] == "quarantined" and quarantine_of(record).get("state") != "quarantined":
            # Logged once, on entry; the prefix is the alert contract (infra/modules/alerts.bicep).
            log.error("connector.tenant.quarantined tenant=%s reason=%s", tid, patch["reason"])
        await self.status.quarantine(tid, cast(QuarantineStatus, {
            **patch, "lastFailureAt": utc_iso(now), "nextAttemptAtIso": utc_iso(patch["nextAttemptAt"]),
        }))
        await self.status.poll(tid, {
            "result": "failed",
            "lastError": patch["reason"],
            "lastErrorAt": utc_iso(now),
            # The failed poll's own cost replaces the previous poll's figures (mode/counts stay from the last
            # successful poll).
            "requests": usage.get("requests", 0),
            "resourceUnits": usage.get("resourceUnits", 0),
            "throttled": usage.get("throttled", 0),
            "retries": usage.get("retries", 0),
        })
        return {"tenantId": tid, "result": "failed", "reason": patch["reason"], "state": patch["state"], "usage": usage}

    async def _record_connector_failure(
        self, record: TenantRecord, exc: ConnectorCredentialError, usage: dict[str, int]
    ) -> dict[str, Any]:
        """The connector's own credential failed: one connector-level state, nothing counted against the tenant.

        The tenant's ``quarantine`` section is left alone (no streak, no backoff), so the first scheduled poll after
        an operator fixes Key Vault runs for every tenant and succeeds.
        """
        tid = record.config.tenant_id
        reason = quarantine.failure_reason(exc)
        log.warning("tenant %s: poll failed on the connector's own credential (%s): %s", tid, reason, exc)
        if self.connector_status is not None:
            await self.connector_status.failed(reason)
        await self.status.poll(tid, {
            "result": "failed",
            "lastError": reason,
            "lastErrorAt": utc_iso(self._clock()),
            "requests": usage.get("requests", 0),
            "resourceUnits": usage.get("resourceUnits", 0),
            "throttled": usage.get("throttled", 0),
            "retries": usage.get("retries", 0),
        })
        state = quarantine_of(record).get("state") or "ok"
        return {"tenantId": tid, "result": "failed", "reason": reason, "state": state, "connectorFault": True}

    # ---- console ----------------------------------------------------------------------------------------------

    async def _tenant(self, tenant_id: str) -> TenantRecord:
        record = await self.tenants.get(tenant_id)
        if record is None:
            raise NotFoundError(f"tenant {tenant_id} is not provisioned", status=404)
        return record

    async def _usable_tenant(self, tenant_id: str) -> TenantRecord:
        """The tenant, when its stored configuration can be polled.

        Raises:
            NotFoundError: unknown tenant.
            ConfigInvalidError: the stored configuration cannot be used (409 naming the field).
        """
        record = await self._tenant(tenant_id)
        problem = config_problem(record.config)
        if problem is not None:
            raise ConfigInvalidError(
                f"the stored configuration cannot be used ({problem}); PUT a valid configuration",
                field=problem.field,
            )
        return record

    async def request_sync(self, tenant_id: str, *, full: bool = False) -> dict[str, Any]:
        """Enqueue a poll now, or answer with the request already pending for the tenant.

        Requests collapse: while one is pending (enqueued, no poll started since), a repeat — a retrying or looping
        client — gets the same ``requestId`` back (``collapsed: true``) and enqueues nothing, so it cannot spend the
        customer's Graph budget. A full request is not served by a pending incremental one: it replaces it.

        Raises:
            NotFoundError: unknown tenant.
            ConfigInvalidError: the stored configuration cannot be used.
        """
        await self._usable_tenant(tenant_id)
        now = self._clock()
        pending = await self.leases.pending_sync(tenant_id)
        if pending is not None and now - pending.requested_at < PENDING_SYNC_SECONDS and (pending.full or not full):
            return {"tenantId": tenant_id, "queued": True, "full": pending.full, "requestId": pending.request_id,
                    "requestedAt": utc_iso(pending.requested_at), "collapsed": True}
        request = SyncRequest(str(uuid.uuid4()), full, now)
        await self.leases.record_sync(tenant_id, request)
        await self._send(PollMessage(tenant_id, "manual", full=full, enqueued_at=now).to_json())
        return {"tenantId": tenant_id, "queued": True, "full": full, "requestId": request.request_id,
                "requestedAt": utc_iso(now), "collapsed": False}

    async def dry_run(self, tenant_id: str, *, full: bool = False) -> dict[str, Any]:
        """The plan the next poll would apply, computed without writing anything.

        It runs inside the HTTP request, so it is bounded: a full read estimated above the engine's
        ``dry_run_max_requests`` is refused before it starts, and any dry run is cut at ``DRY_RUN_SECONDS``.

        Raises:
            NotFoundError: unknown tenant.
            ConfigInvalidError: the stored configuration cannot be used.
            ConflictError: a full dry run of a tenant this large is refused (409).
            RetriableError: the dry run did not finish in time (503; e.g. Graph is throttling the tenant).
            Graph errors as :meth:`PollEngine.poll`.
        """
        await self._usable_tenant(tenant_id)
        key = (tenant_id, full)
        running = self._dry_runs.get(key)
        if running is None:
            # Collapsed per tenant: concurrent identical dry runs (a looping client) share one computation.
            running = asyncio.ensure_future(self._dry_run(tenant_id, full))
            self._dry_runs[key] = running
            running.add_done_callback(lambda _: self._dry_runs.pop(key, None))
        return await asyncio.shield(running)

    async def _dry_run(self, tenant_id: str, full: bool) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self._dry_run_seconds):
                outcome: PollOutcome = await self.engine.poll(tenant_id, dry_run=True, force_full=full)
        except TimeoutError:
            raise RetriableError(
                f"the dry run did not finish within {self._dry_run_seconds:g} s; retry later", status=503
            ) from None
        return outcome.summary()

    async def list_devices(self, tenant_id: str, after: str | None, limit: int) -> dict[str, Any]:
        """A page of device rows in id order (``after`` = the last id of the previous page).

        Raises:
            NotFoundError: unknown tenant.
        """
        await self._tenant(tenant_id)
        rows = await self.store.list_devices(tenant_id, after or "", limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return {"devices": rows, "next": rows[-1]["id"] if more and rows else None}

    async def list_events(self, tenant_id: str, after: str | None, limit: int) -> dict[str, Any]:
        """A page of the change feed after the cursor.

        Raises:
            NotFoundError: unknown tenant.
            ValidationError: the cursor is malformed, foreign, or beyond the feed.
        """
        await self._tenant(tenant_id)
        position = decode_event_cursor(tenant_id, after) if after else None
        if position is not None:
            heads = await self.store.feed_heads(tenant_id)
            if len(position) != len(heads) or any(p > h for p, h in zip(position, heads, strict=True)):
                raise ValidationError("unknown cursor", field="after")
        events, position_after, more = await self.store.events(tenant_id, position, limit)
        return {
            "events": [e.to_dict() for e in events],
            "next": encode_event_cursor(tenant_id, position_after),
            "hasMore": more,
        }

    async def approve(self, tenant_id: str, caller: str, plan_id: str) -> dict[str, Any]:
        """Approve the staged plan named ``plan_id`` and enqueue a full poll that applies it.

        The poll recomputes the plan from fresh Graph reads and applies the deactivations only when the recomputed
        plan has the approved id; otherwise the new plan is staged and needs its own approval.

        Raises:
            NotFoundError: unknown tenant.
            ConflictError: nothing is staged, or the staged plan is not ``plan_id`` (its ``currentPlan`` attached).
        """
        record = await self._tenant(tenant_id)
        guard = guard_of(record)
        if guard.get("state") != "deactivations_staged":
            raise ConflictError("no deactivations are staged for this tenant", details={"currentPlan": None})
        if guard.get("planId") != plan_id:
            raise ConflictError(
                "the staged plan is not the one approved; review the current plan and approve its planId",
                details={"currentPlan": staged_plan(guard)},
            )
        staged = int(guard.get("staged") or 0)
        await self.status.guard(tenant_id, {
            "approvedPlanId": plan_id, "approvedAt": utc_iso(self._clock()), "approvedBy": caller[:128],
            # Identifies this approval, so a poll that started before it never clears it (approvedAt has 1 s steps).
            "approvalId": uuid.uuid4().hex,
        })
        # A full poll: the approved plan applies only if fresh reads recompute exactly it.
        await self._send(PollMessage(tenant_id, "deactivations_approved", full=True,
                                     enqueued_at=self._clock()).to_json())
        return {"tenantId": tenant_id, "approved": staged, "planId": plan_id, "queued": True}


def staged_plan(guard: GuardStatus) -> dict[str, Any]:
    """The staged plan as the console sees it (the 409 of a stale approval carries it)."""
    return {
        "planId": guard.get("planId"),
        "staged": int(guard.get("staged") or 0),
        "why": guard.get("why"),
        "stagedAt": guard.get("stagedAt"),
        "lastCheckedAt": guard.get("lastCheckedAt"),
        "sample": list(guard.get("sample") or ())[:20],
    }


def build_enrollment_service(c: Container) -> EnrollmentService:
    """The process's enrollment service over Table Storage, the poll queue and Graph."""
    from shared_code.adapters.tenant_store import build_connector_status, build_tenant_repository

    tenants: TenantRepository = c.service(build_tenant_repository)
    store = TableEnrollmentStore(c.storage)
    cursors = TableCursorStore(c.storage)
    engine = PollEngine(
        tenants=tenants,
        store=store,
        cursors=cursors,
        graph_factory=c.graph,
        clock=c.clock.now,
        full_reconcile_hours=c.settings.full_reconcile_hours,
        pending_give_up_hours=c.settings.pending_give_up_hours,
    )
    queue_name = c.settings.poll_queue_name
    created: list[bool] = []

    async def send(body: str, delay_seconds: int = 0, /) -> None:
        from azure.core.exceptions import ResourceExistsError

        client = c.storage.sender(queue_name)  # one open client per process, not a connection per message
        if not created:
            with contextlib.suppress(ResourceExistsError):
                await client.create_queue()
            created.append(True)
        await client.send_message(body, visibility_timeout=delay_seconds or None)

    return EnrollmentService(
        tenants=tenants,
        store=store,
        cursors=cursors,
        leases=TableLeaseStore(c.storage),
        engine=engine,
        send=send,
        clock=c.clock.now,
        quarantine_after=c.settings.quarantine_after_failures,
        default_interval_minutes=c.settings.poll_interval_minutes,
        connector_status=c.service(build_connector_status),
    )
