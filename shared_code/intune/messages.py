"""Sending DataUploadMessages and settling their results (shared by threat levels and App Sync inventory).

Entity formats: Intune's MTD entity types are not public (reference/intune.md §2 "not public"). We use the formats the
simulator defines from the best public evidence (Fleet's ``EntityType``/``TenantId``/``DeviceId``/``UserId``/
``LastUpdateTime`` shape): type 2 = device threat level, type 3 = App Sync request. They live here, in one place.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from shared_code import telemetry
from shared_code.adapters.intune import IntuneClient, IntuneConnectorStateError, IntuneNotFoundError, iso_now
from shared_code.api_call import ApiCall
from shared_code.errors import ConflictError, NotFoundError, PermissionMissingError
from shared_code.intune.devices import EnrolledDevice, EnrolledDevices
from shared_code.intune.discovery import DEVICE_SERVICE, DiscoveryService
from shared_code.intune.status import ActivityCounters, IntuneStatusWriter, intune_of, iso, parse_iso
from shared_code.intune.uploads import (
    FINAL_STATUSES,
    NOT_SENT,
    PENDING,
    REJECTED,
    PendingEntry,
    UploadMessage,
    UploadStore,
)
from shared_code.tenants import TenantRecord, TenantRepository

log = logging.getLogger("connector.intune.messages")

ENTITY_THREAT_LEVEL = 2
ENTITY_APP_SYNC_REQUEST = 3
# A message Intune has not settled after a day (or after this many polls) is given up as Failed. Intune's processing
# time is not documented; a day is hundreds of timer runs (UPLOAD_RESULTS_SCHEDULE, every 2 minutes by default), and a
# message that never settles (consent revoked, Intune lost it) must not sit in the timer's work list forever. It also
# bounds the pending index the timer reads each run.
MAX_PENDING_SECONDS = 24 * 3600.0
MAX_RESULT_POLLS = 1000
TIMED_OUT_DETAIL = "result timed out: Intune did not settle the message"


class ConnectorNotReadyError(ConflictError):
    """Intune cannot take device messages for this tenant now (not provisioned, Not Set Up, Unavailable).

    Attributes:
        connector_state: what we know of the connector (our ``intune`` state and Intune's reported state).
    """

    def __init__(self, message: str, *, connector_state: dict[str, Any]) -> None:
        super().__init__(message, status=409, code="connector_not_ready")
        self.connector_state = connector_state


class DeviceHasNoOwnerError(ConflictError):
    """The device is enrolled but has no registered owner, and the message needs one as ``UserId``.

    Shared and kiosk devices are enrolled as group members themselves (issue 10 §3). What ``UserId`` Intune's
    partner data-sync expects for a device without a user is not documented (see ``shared_code/intune/devices.py``),
    so the connector refuses rather than invent one; registering an owner in Entra makes the device reportable after
    the next poll.

    Attributes:
        device_id: the Entra deviceId of the device.
    """

    def __init__(self, message: str, *, device_id: str) -> None:
        super().__init__(message, status=409, code="device_has_no_owner")
        self.device_id = device_id


def connector_view(record: TenantRecord) -> dict[str, Any]:
    """The connector state as the API reports it."""
    section = intune_of(record)
    return {
        "state": section.get("state", "unknown"),
        "connectorState": section.get("connectorState"),
        "problem": section.get("problem"),
    }


class MessageService:
    """Resolves tenant + device, sends messages, and settles results."""

    def __init__(
        self,
        *,
        tenants: TenantRepository,
        devices: EnrolledDevices,
        discovery: DiscoveryService,
        intune: IntuneClient,
        store: UploadStore,
        counters: ActivityCounters,
        now: Callable[[], float],
        max_pending_seconds: float = MAX_PENDING_SECONDS,
        max_polls: int = MAX_RESULT_POLLS,
    ) -> None:
        self.tenants = tenants
        self._status = IntuneStatusWriter(tenants)
        self.devices = devices
        self.discovery = discovery
        self.intune = intune
        self.store = store
        self.counters = counters
        self.now = now
        self.max_pending_seconds = max_pending_seconds
        self.max_polls = max_polls
        self.on_settled: list[Callable[[UploadMessage, dict[str, Any]], Awaitable[None]]] = []

    async def resolve(self, tenant_id: str, device_id: str) -> tuple[TenantRecord, EnrolledDevice]:
        """The active tenant and the enrolled device.

        Raises:
            NotFoundError: unknown or deprovisioned tenant, or device not enrolled.
        """
        record = await self.tenants.get(tenant_id)
        if record is None or record.state != "active":
            raise NotFoundError(f"tenant {tenant_id} is not provisioned", status=404)
        device = await self.devices.get(tenant_id, device_id)
        if device is None:
            raise NotFoundError(f"device {device_id} is not enrolled in tenant {tenant_id}", status=404)
        return record, device

    @staticmethod
    def require_owner(tenant_id: str, device: EnrolledDevice) -> str:
        """The device's registered owner (Intune's ``UserId``).

        Raises:
            DeviceHasNoOwnerError: an enrolled shared/kiosk device without a registered owner.
        """
        if device.user_id is None:
            raise DeviceHasNoOwnerError(
                f"device {device.device_id} is enrolled in tenant {tenant_id} but has no registered owner; Intune "
                "entities carry the owner as UserId and no value is documented for a device without one",
                device_id=device.device_id,
            )
        return device.user_id

    def require_provisioned(self, record: TenantRecord) -> None:
        """Refuse when the tenant is not provisioned at Intune.

        Raises:
            ConnectorNotReadyError: with the connector state.
        """
        view = connector_view(record)
        if view["state"] != "provisioned":
            raise ConnectorNotReadyError(
                f"the Intune connector for tenant {record.config.tenant_id} is not ready ({view['state']})",
                connector_state=view,
            )

    async def send(self, message: UploadMessage, api_call: ApiCall, feature: str) -> UploadMessage:
        """PUT the message (stored first, so a crash between leaves a resendable NotSent row).

        Raises:
            ConnectorNotReadyError: Intune reports the connector Not Set Up / Unavailable.
            PermissionMissingError: ``update_device_health`` not granted (also recorded for the feature).
            RetriableError: Intune unavailable after retries (message stays NotSent; a retry resends it).
        """
        async with telemetry.unit(telemetry.UPLOAD, {"tenant_id": message.tenant_id, "upload.kind": feature}) as work:
            sent = await self._send(message, api_call, feature)
            work.set(result=sent.status)
            return sent

    async def _send(self, message: UploadMessage, api_call: ApiCall, feature: str) -> UploadMessage:
        tenant_id = message.tenant_id
        if message.status in (NOT_SENT, REJECTED):
            await self.store.save(message)
        try:
            await self.discovery.call_service(
                tenant_id,
                DEVICE_SERVICE,
                lambda url: self.intune.upload(
                    url,
                    tenant_id,
                    message.message_id,
                    message.entities,
                    api_call=api_call,
                    upload_time=message.upload_time,
                ),
            )
        except IntuneConnectorStateError as exc:
            await self._status.intune(tenant_id, {"connectorState": exc.state, "connectorStateAt": iso(self.now())})
            message.status, message.error_detail = REJECTED, exc.detail
            await self.store.save(message)
            record = await self.tenants.get(tenant_id)
            view = connector_view(record) if record else {"state": "unknown"}
            view["connectorState"] = exc.state
            raise ConnectorNotReadyError(
                f"Intune reports the MTD connector for tenant {tenant_id} as {exc.state}: {exc.detail}",
                connector_state=view,
            ) from None
        except PermissionMissingError as exc:
            await self._status.permission(tenant_id, feature, exc.permission)
            raise
        message.status = PENDING
        await self.store.save(message)
        return message

    async def settle(self, message: UploadMessage) -> UploadMessage:
        """Poll one pending message once; store Succeeded/Failed with ErrorDetail and run the settle hooks.

        Hooks run before the message row is saved final, so a crash or storage error in between leaves it Pending
        and the next poll runs them again: hooks are idempotent (same rows, compare-and-swap pointers).

        Raises:
            ConnectorError: Intune/Graph/token trouble (the message stays Pending).
        """
        if message.status in FINAL_STATUSES:
            return message
        try:
            result = await self.discovery.call_service(
                message.tenant_id,
                DEVICE_SERVICE,
                lambda url: self.intune.upload_result(url, message.tenant_id, message.message_id),
            )
        except IntuneNotFoundError:
            result = {"Status": "Failed", "ErrorDetail": "Intune does not know this message (404)"}
        message.polls += 1
        status = str(result.get("Status", PENDING))
        if status in FINAL_STATUSES:
            message.status = status
            message.error_detail = str(result["ErrorDetail"]) if result.get("ErrorDetail") else None
            for hook in self.on_settled:
                await hook(message, result)
        elif self._expired(message):
            await self._give_up(message, TIMED_OUT_DETAIL)
            return message
        await self.store.save(message)
        return message

    def _expired(self, message: UploadMessage) -> bool:
        since = parse_iso(message.created_at) or parse_iso(message.upload_time)
        too_old = since is not None and self.now() - since > self.max_pending_seconds
        return too_old or message.polls >= self.max_polls

    async def _give_up(self, message: UploadMessage, detail: str) -> None:
        """Mark a message Failed without an Intune result (the hooks see an empty result).

        Giving up is final: a hook that fails here is logged and the message is still saved as Failed, so a message
        whose hook keeps failing cannot stay in the work list.
        """
        message.status, message.error_detail = "Failed", detail
        for hook in self.on_settled:
            try:
                await hook(message, {"Status": "Failed", "ErrorDetail": detail})
            except Exception:
                log.exception("settle hook for upload %s failed while giving up", message.message_id)
        await self.store.save(message)

    async def settle_pending(self, limit: int = 500) -> dict[str, int]:
        """The results timer: poll up to ``limit`` pending messages once, least recently polled first.

        Nothing one message does stops the others: any error (Intune, Graph, consent, a Table 5xx, an unexpected
        result shape) is logged, the message is moved to the back of the queue, and the run goes on. Messages of
        tenants that are no longer active are settled as Failed without calling Intune; messages older than
        ``max_pending_seconds`` (or polled ``max_polls`` times) are given up as Failed ("result timed out"), whether
        or not Intune still answers for their tenant.
        """
        counts = {"polled": 0, "succeeded": 0, "failed": 0, "pending": 0, "errors": 0, "expired": 0, "dropped": 0}
        active: dict[str, bool] = {}
        for entry in await self.store.pending(limit):
            counts["polled"] += 1
            try:
                outcome = await self._settle_entry(entry, active)
            except Exception:  # one message's trouble (consent, outage, Table 5xx, odd result) must not stop the run
                counts["errors"] += 1
                log.exception("polling upload %s of tenant %s failed", entry.message_id, entry.tenant_id)
                try:
                    await self.store.touch_pending(entry, iso(self.now()))
                except Exception:  # the index row stays where it was; the next run tries again
                    log.exception("could not record the failed poll of upload %s", entry.message_id)
                    continue
                await self._expire_after_error(entry, counts)
                continue
            counts[outcome] += 1
        return counts

    async def _settle_entry(self, entry: PendingEntry, active: dict[str, bool]) -> str:
        message = await self.store.get(entry.tenant_id, entry.message_id)
        if message is None or message.status != PENDING:
            await self.store.drop_pending(entry)
            return "dropped"
        if entry.tenant_id not in active:
            record = await self.tenants.get(entry.tenant_id)
            active[entry.tenant_id] = record is not None and record.state == "active"
        if not active[entry.tenant_id]:
            await self._give_up(message, "tenant is no longer provisioned: result not fetched")
            return "failed"
        if self._expired(message):
            await self._give_up(message, TIMED_OUT_DETAIL)
            return "expired"
        settled = await self.settle(message)
        if settled.error_detail == TIMED_OUT_DETAIL:
            return "expired"
        return {"Succeeded": "succeeded", "Failed": "failed"}.get(settled.status, "pending")

    async def _expire_after_error(self, entry: PendingEntry, counts: dict[str, int]) -> None:
        """A message whose every poll errors (consent revoked, Intune gone) still times out."""
        since = parse_iso(entry.since)
        if since is None or self.now() - since <= self.max_pending_seconds:
            return
        try:
            message = await self.store.get(entry.tenant_id, entry.message_id)
            if message is not None and message.status == PENDING:
                await self._give_up(message, TIMED_OUT_DETAIL)
                counts["expired"] += 1
            else:
                await self.store.drop_pending(entry)
        except Exception:
            log.exception("could not expire upload %s", entry.message_id)


def new_message(tenant_id: str, kind: str, device_id: str, entities: list[dict[str, Any]], **extra: Any) -> (
    UploadMessage
):
    """A fresh message with a new GUID (Intune keys messages by it; a resend reuses it)."""
    return UploadMessage(
        tenant_id=tenant_id,
        message_id=str(uuid.uuid4()),
        kind=kind,
        device_id=device_id,
        upload_time=iso_now(),
        entities=entities,
        extra=dict(extra),
    )
