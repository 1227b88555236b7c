"""Poison messages of the poll queue: why a tenant's poll message kept failing, and how an operator puts it back.

The Functions host delivers a poll message up to host.json's ``maxDequeueCount`` times (5) and then moves it to
``<POLL_QUEUE_NAME>-poison`` (functions-bindings-storage-queue-trigger, "Poison messages"). The poll service records a
*tenant's* failures itself and acknowledges the message, so what reaches the poison queue is a failure around the
poll: storage unavailable or refused (a missing table, a revoked role assignment), or a bug. The worker records each
failed delivery in the tenant's status section ``delivery`` (state ``retrying`` → ``poisoned`` on the last attempt,
with the error), so ``GET /api/tenants/{id}`` says why; recording is best effort (when the tenants table itself is the
fault, the error log line ``connector.poll.delivery_failed`` is the evidence).

An operator re-queues a tenant's poison messages with ``POST /api/tenants/{id}/poison/requeue`` (Console.Manage) or
``python -m shared_code.cli requeue``. A re-queued message is an exact copy, sent before the poison copy is deleted:
a crash in between leaves a duplicate, which the poll lease and the "served since enqueued" rule make harmless.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from shared_code.bootstrap import Container
from shared_code.domain.timestamps import utc_iso
from shared_code.errors import NotFoundError, ValidationError
from shared_code.tenant_status import DELIVERY, DeliveryStatus
from shared_code.tenants import TenantRepository

log = logging.getLogger("connector.enrollment.poison")

# host.json extensions.queues.maxDequeueCount: a unit test keeps the two equal.
MAX_DEQUEUE_COUNT = 5
SECTION = DELIVERY  # the status section this module alone writes (DeliveryStatus)
# Storage Queues hand out at most 32 messages per receive/peek.
RECEIVE_BATCH = 32
# A poison message is received (hidden) for this long while it is re-queued; a crash leaves it hidden no longer.
RECEIVE_VISIBILITY_SECONDS = 60
MAX_ERROR_CHARS = 300
_ERROR_CODE = re.compile(r'"code"\s*:\s*"([A-Za-z0-9_.]{1,64})"')
REQUEUE_COMMAND = "POST /api/tenants/{tenantId}/poison/requeue  (or: python -m shared_code.cli requeue {tenantId})"


def poison_queue_name(queue_name: str) -> str:
    """The host's poison queue for ``queue_name``."""
    return f"{queue_name}-poison"


def describe_error(exc: BaseException) -> str:
    """One line for status and logs: type, service error code (azure-core's ``error_code``, e.g. ``TableNotFound``)
    and the first line of the message, bounded (no stack, no response body)."""
    text = str(exc).strip()
    first = (text.splitlines() or [""])[0]
    response = getattr(exc, "response", None)
    code = getattr(exc, "error_code", None) or (response.headers.get("x-ms-error-code") if response is not None
                                                 and hasattr(response, "headers") else None)
    if not code and (found := _ERROR_CODE.search(text)):
        code = found.group(1)
    return (f"{type(exc).__name__}" + (f" [{code}]" if code else "") + f": {first}")[:MAX_ERROR_CHARS]


@dataclass(frozen=True)
class PoisonMessage:
    """One message in the poison queue (peeked: nothing changed)."""

    message_id: str
    tenant_id: str | None  # None: the body is not a readable poll message
    reason: str | None
    inserted_at: str | None
    dequeue_count: int

    def to_dict(self) -> dict[str, Any]:
        """JSON form (CLI, logs)."""
        return {
            "messageId": self.message_id, "tenantId": self.tenant_id, "reason": self.reason,
            "insertedAt": self.inserted_at, "dequeueCount": self.dequeue_count,
        }


def _parse_body(body: bytes) -> tuple[str | None, str | None]:
    """(tenant id, reason) of a decoded poll message; (None, None) when it is not one."""
    from shared_code.enrollment.service import PollMessage

    try:
        message = PollMessage.from_json(body)
    except ValidationError:
        return None, None
    return message.tenant_id, message.reason


def _parse(content: Any) -> tuple[str | None, str | None]:
    """(tenant id, reason) of a raw queue message (base64, as the host stores it); (None, None) when unreadable."""
    try:
        body = base64.b64decode(str(content or ""), validate=True)
    except (binascii.Error, ValueError):
        return None, None
    return _parse_body(body)


QueueFactory = Callable[[str], Any]


class PoisonService:
    """Records failed deliveries in tenant status and moves poison messages back to the poll queue."""

    def __init__(
        self,
        *,
        tenants: TenantRepository,
        queue: QueueFactory,
        queue_name: str,
        clock: Callable[[], float],
        max_dequeue_count: int = MAX_DEQUEUE_COUNT,
    ) -> None:
        """Args:
            tenants: the tenant repository (status section ``delivery``).
            queue: builds an azure.storage.queue.aio.QueueClient for a queue name (base64 encode policy on send).
            queue_name: the poll queue.
            clock: seconds since the epoch.
            max_dequeue_count: host.json's maxDequeueCount.
        """
        self._tenants = tenants
        self._queue = queue
        self.queue_name = queue_name
        self.poison_queue_name = poison_queue_name(queue_name)
        self._clock = clock
        self._max = max_dequeue_count

    async def _record(self, tenant_id: str, patch: DeliveryStatus) -> None:
        """Merge into the tenant's ``delivery`` section (this module is its one writer)."""
        await self._tenants.update_status(tenant_id, SECTION, dict(patch))

    # ---- the worker's side ---------------------------------------------------------------------------------

    async def record_failure(self, body: bytes, message_id: str, dequeue_count: int, exc: BaseException) -> None:
        """Record a failed delivery of a poll message (never raises: the original error is what matters).

        On the last attempt (``dequeue_count >= maxDequeueCount``) the state is ``poisoned``: the host moves the
        message to the poison queue right after this invocation fails.
        """
        error = describe_error(exc)
        last = dequeue_count >= self._max
        log.error("connector.poll.delivery_failed message=%s attempt=%d/%d%s: %s", message_id, dequeue_count,
                  self._max, " (moving to the poison queue)" if last else "", error)
        tenant_id, reason = _parse_body(body)
        if tenant_id is None:
            return
        now = utc_iso(self._clock())
        patch: DeliveryStatus = {
            "state": "poisoned" if last else "retrying",
            "messageId": message_id,
            "reason": reason,
            "attempt": dequeue_count,
            "maxAttempts": self._max,
            "lastError": error,
            "lastErrorAt": now,
        }
        if last:
            patch |= {"poisonedAt": now, "queue": self.poison_queue_name,
                      "action": REQUEUE_COMMAND.format(tenantId=tenant_id)}
        try:
            await self._record(tenant_id, patch)
        except Exception as record_error:  # noqa: BLE001 - the storage fault may be the very reason we are here
            log.warning("could not record the failed delivery for tenant %s: %s", tenant_id,
                        describe_error(record_error))

    async def record_recovered(self, body: bytes, message_id: str, dequeue_count: int) -> None:
        """A redelivered message succeeded: mark the tenant's delivery section recovered (never raises)."""
        tenant_id, _reason = _parse_body(body)
        if tenant_id is None:
            return
        try:
            await self._record(tenant_id, {
                "state": "recovered", "messageId": message_id, "attempt": dequeue_count,
                "recoveredAt": utc_iso(self._clock()),
            })
        except Exception as record_error:  # noqa: BLE001 - best effort, as record_failure
            log.warning("could not record the recovered delivery for tenant %s: %s", tenant_id,
                        describe_error(record_error))

    # ---- the operator's side -------------------------------------------------------------------------------

    async def list(self, tenant_id: str | None = None) -> list[PoisonMessage]:
        """The first 32 messages of the poison queue (peeked; optionally one tenant's), oldest first.

        Storage Queues peek at most 32 messages; :meth:`requeue` works through the whole queue.
        """
        from azure.core.exceptions import ResourceNotFoundError

        out: list[PoisonMessage] = []
        async with self._queue(self.poison_queue_name) as client:
            try:
                peeked = await client.peek_messages(max_messages=RECEIVE_BATCH)
            except ResourceNotFoundError:
                return []  # no message was ever poisoned: the host creates the queue on first use
            for m in peeked:
                tid, reason = _parse(m.content)
                if tenant_id is None or tid == tenant_id:
                    out.append(PoisonMessage(str(m.id), tid, reason, utc_iso(m.inserted_on.timestamp())
                                             if m.inserted_on else None, int(m.dequeue_count or 0)))
        return out

    async def count(self) -> int:
        """Approximate number of messages in the poison queue (0 when it does not exist)."""
        from azure.core.exceptions import ResourceNotFoundError

        async with self._queue(self.poison_queue_name) as client:
            try:
                props = await client.get_queue_properties()
            except ResourceNotFoundError:
                return 0
        return int(props.approximate_message_count or 0)

    async def requeue(
        self,
        *,
        tenant_id: str | None,
        caller: str,
        on_progress: Callable[[int, int], Awaitable[None] | None] | None = None,
    ) -> dict[str, Any]:
        """Move the poison messages of ``tenant_id`` (every readable one when None) back to the poll queue.

        Works through the whole poison queue in batches of 32: each matching message is sent to the poll queue and
        then deleted from the poison queue; the others are made visible again at once. Unreadable messages (not a
        poll message) stay where they are and are counted.

        Args:
            tenant_id: the tenant whose messages to re-queue, or None for all.
            caller: who asked (recorded in the tenant's status).
            on_progress: called with (messages looked at, re-queued) after each message (CLI progress bar).

        Raises:
            NotFoundError: ``tenant_id`` is given and is not provisioned.
        """
        from azure.core.exceptions import ResourceNotFoundError

        if tenant_id is not None and await self._tenants.get(tenant_id) is None:
            raise NotFoundError(f"tenant {tenant_id} is not provisioned", status=404)
        seen = requeued = unreadable = 0
        by_tenant: dict[str, int] = {}
        skipped: list[Any] = []
        async with self._queue(self.poison_queue_name) as poison, self._queue(self.queue_name) as target:
            while True:
                try:
                    batch = [m async for m in poison.receive_messages(
                        messages_per_page=RECEIVE_BATCH, max_messages=RECEIVE_BATCH,
                        visibility_timeout=RECEIVE_VISIBILITY_SECONDS)]
                except ResourceNotFoundError:
                    break
                if not batch:
                    break
                for m in batch:
                    seen += 1
                    tid, _reason = _parse(m.content)
                    if tid is None or (tenant_id is not None and tid != tenant_id):
                        unreadable += tid is None
                        skipped.append(m)
                    else:
                        # Send first, delete second: a crash in between leaves a harmless duplicate, never a loss.
                        await target.send_message(base64.b64decode(str(m.content)).decode("utf-8"))
                        await poison.delete_message(m.id, m.pop_receipt)
                        requeued += 1
                        by_tenant[tid] = by_tenant.get(tid, 0) + 1
                    if on_progress is not None:
                        maybe = on_progress(seen, requeued)
                        if maybe is not None:
                            await maybe
            for m in skipped:
                # Received but not ours: visible again now rather than after the receive's visibility timeout.
                await poison.update_message(m.id, m.pop_receipt, visibility_timeout=0)
        now = utc_iso(self._clock())
        for tid, count in by_tenant.items():
            await self._record(tid, {
                "state": "requeued", "requeuedAt": now, "requeuedBy": caller[:128], "requeued": count,
            })
        if requeued:
            log.warning("connector.poll.requeued count=%d tenants=%d by=%s", requeued, len(by_tenant), caller[:128])
        return {"tenantId": tenant_id, "requeued": requeued, "tenants": sorted(by_tenant),
                "remaining": seen - requeued, "unreadable": unreadable}


def build_poison_service(c: Container) -> PoisonService:
    """The process's PoisonService (``container().service(build_poison_service)``)."""
    from shared_code.adapters.tenant_store import build_tenant_repository

    return PoisonService(
        tenants=c.service(build_tenant_repository),
        queue=c.storage.queue,
        queue_name=c.settings.poll_queue_name,
        clock=c.clock.now,
    )
