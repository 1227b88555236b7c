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

from shared_code.adapters.intune import IntuneClient, IntuneConnectorStateError, IntuneNotFoundError, iso_now
from shared_code.errors import ConflictError, ConnectorError, NotFoundError, PermissionMissingError
from shared_code.intune.devices import EnrolledDevice, EnrolledDevices
from shared_code.intune.discovery import DiscoveryService
from shared_code.intune.status import INTUNE, PERMISSIONS, ActivityCounters, iso, permission_problem
from shared_code.intune.uploads import FINAL_STATUSES, NOT_SENT, PENDING, REJECTED, UploadMessage, UploadStore
from shared_code.permissions import ApiCall
from shared_code.tenants import TenantRecord, TenantRepository

log = logging.getLogger("connector.intune.messages")

ENTITY_THREAT_LEVEL = 2
ENTITY_APP_SYNC_REQUEST = 3


class ConnectorNotReadyError(ConflictError):
    """Intune cannot take device messages for this tenant now (not provisioned, Not Set Up, Unavailable).

    Attributes:
        connector_state: what we know of the connector (our ``intune`` state and Intune's reported state).
    """

    def __init__(self, message: str, *, connector_state: dict[str, Any]) -> None:
        super().__init__(message, status=409, code="connector_not_ready")
        self.connector_state = connector_state


def connector_view(record: TenantRecord) -> dict[str, Any]:
    """The connector state as the API reports it."""
    section = record.status.get(INTUNE, {})
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
    ) -> None:
        self.tenants = tenants
        self.devices = devices
        self.discovery = discovery
        self.intune = intune
        self.store = store
        self.counters = counters
        self.now = now
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
        tenant_id = message.tenant_id
        if message.status in (NOT_SENT, REJECTED):
            await self.store.save(message)
        try:
            await self.discovery.call_with_endpoints(
                tenant_id,
                lambda ep: self.intune.upload(
                    ep.device_url,
                    tenant_id,
                    message.message_id,
                    message.entities,
                    api_call=api_call,
                    upload_time=message.upload_time,
                ),
            )
        except IntuneConnectorStateError as exc:
            await self.tenants.update_status(
                tenant_id, INTUNE, {"connectorState": exc.state, "connectorStateAt": iso(self.now())}
            )
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
            await self.tenants.update_status(tenant_id, PERMISSIONS, {feature: permission_problem(exc.permission)})
            raise
        message.status = PENDING
        await self.store.save(message)
        return message

    async def settle(self, message: UploadMessage) -> UploadMessage:
        """Poll one pending message once; store Succeeded/Failed with ErrorDetail and run the settle hooks."""
        if message.status in FINAL_STATUSES:
            return message
        try:
            result = await self.discovery.call_with_endpoints(
                message.tenant_id,
                lambda ep: self.intune.upload_result(ep.device_url, message.tenant_id, message.message_id),
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
        await self.store.save(message)
        return message

    async def settle_pending(self, limit: int = 500) -> dict[str, int]:
        """The results timer: poll every pending message once; one failure never stops the others."""
        counts = {"polled": 0, "succeeded": 0, "failed": 0, "pending": 0, "errors": 0}
        for message in await self.store.pending(limit):
            counts["polled"] += 1
            try:
                settled = await self.settle(message)
            except ConnectorError as exc:  # one tenant's trouble (consent, discovery, outage) must not stop the run
                counts["errors"] += 1
                log.warning("polling upload %s failed: %s", message.message_id, exc)
                continue
            key = {"Succeeded": "succeeded", "Failed": "failed"}.get(settled.status, "pending")
            counts[key] += 1
        return counts


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
