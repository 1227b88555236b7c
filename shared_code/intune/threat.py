"""Device threat levels: validate, send as a DataUploadMessage, keep the latest result per device.

Levels are those of Intune's "Device threat level" compliance setting: secured, low, medium, high
(mtd-device-compliance-policy-create.md; reference/intune.md §5). ``detectedAt`` becomes the entity's
``LastUpdateTime``, which orders messages at Intune (Fleet: "global timestamp indicating the order of messages"), so
an older detection sent late cannot overwrite a newer one. A client ``idempotencyKey`` maps to one message id: a
replay answers the same upload (and resends it if the first send never reached Intune).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared_code.errors import ConflictError, ValidationError
from shared_code.intune.messages import ENTITY_THREAT_LEVEL, MessageService, new_message
from shared_code.intune.status import parse_iso
from shared_code.intune.uploads import NOT_SENT, REJECTED, UploadMessage, digest
from shared_code.permissions import call
from shared_code.validation import Json, List, Obj, Prop, Spec, Str

LEVELS = ("secured", "low", "medium", "high")
MAX_THREATS = 100
MAX_THREAT_CHARS = 2000
MAX_KEY_CHARS = 128
# RFC 3339 ``date-time``: full date, "T", full time with seconds, and a mandatory offset (``Z`` or ±hh:mm).
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")
# detectedAt becomes Intune's LastUpdateTime, which orders messages: a far-future value would pin the device's level
# (every later, truthful report would be "older"). Allow only client clock skew into the future.
MAX_FUTURE_SECONDS = 5 * 60


def parse_detected_at(value: Any, now: float) -> float:
    """``detectedAt`` as epoch seconds: an RFC 3339 date-time with an offset, at most a few minutes ahead of ``now``.

    Not ``shared_code.validation.DateTime``: that spec accepts minute-precision times and any future date.

    Raises:
        ValidationError: field ``detectedAt``.
    """
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValidationError(
            "detectedAt must be an RFC 3339 date-time with seconds and a time zone, e.g. 2026-01-05T10:00:00Z",
            field="detectedAt",
        )
    try:
        # Python's fromisoformat takes at most 6 fraction digits; RFC 3339 allows more.
        text = re.sub(r"(\.\d{6})\d+", r"\1", value[:10] + "T" + value[11:])
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00")).timestamp()
    except (ValueError, OverflowError):
        raise ValidationError("detectedAt is not a valid date-time", field="detectedAt") from None
    if moment > now + MAX_FUTURE_SECONDS:
        raise ValidationError(
            f"detectedAt must not be more than {MAX_FUTURE_SECONDS // 60} minutes in the future", field="detectedAt"
        )
    return moment


@dataclass(frozen=True)
class DetectedAt(Spec):
    """The ``detectedAt`` spec: :func:`parse_detected_at` against ``now``."""

    now: float

    def check(self, value: Any, path: str) -> str:
        """See :class:`~shared_code.validation.Spec`."""
        parse_detected_at(value, self.now)
        return str(value)


def validate_threat_body(body: Any, *, now: float | None = None) -> dict[str, Any]:
    """Check a threat report body (openapi.yaml's ThreatInput); return it normalized.

    Levels are lower case exactly as openapi.yaml lists them (no case folding). Each threat is an object or a string
    sent to Intune as it is, so every string in it must be valid text too.

    Args:
        body: the PUT body.
        now: the current time (epoch seconds; default the wall clock) that bounds ``detectedAt``.

    Raises:
        ValidationError: naming the offending field.
    """
    spec = Obj({
        "level": Prop(Str(enum=LEVELS, strip=False), required=True),
        "detectedAt": Prop(DetectedAt(time.time() if now is None else now), required=True),
        "threats": Prop(List(Json(max_chars=MAX_THREAT_CHARS, types=(dict, str)), max_items=MAX_THREATS)),
        "idempotencyKey": Prop(Str(max_length=MAX_KEY_CHARS, strip=False), nullable=True),
    })
    data = spec.check(body, "")
    return {"level": data["level"], "detectedAt": data["detectedAt"], "threats": data.get("threats", []),
            "idempotencyKey": data.get("idempotencyKey")}


class ThreatService:
    """PUT threat → upload; GET threat → latest report and its result."""

    def __init__(self, messages: MessageService) -> None:
        self._messages = messages
        messages.on_settled.append(self._settled)

    async def report(self, tenant_id: str, device_id: str, body: dict[str, Any], *, idempotency_key: str | None = None
                     ) -> tuple[UploadMessage, bool]:
        """Send a threat level. Returns (upload, replayed).

        Raises:
            ValidationError, NotFoundError, ConnectorNotReadyError, DeviceHasNoOwnerError, PermissionMissingError,
            RetriableError, ConflictError (idempotency key reused with a different body).
        """
        report = validate_threat_body(body, now=self._messages.now())
        key = report["idempotencyKey"] or idempotency_key
        record, device = await self._messages.resolve(tenant_id, device_id)
        self._messages.require_provisioned(record)
        user_id = self._messages.require_owner(tenant_id, device)
        entity = {
            "EntityType": ENTITY_THREAT_LEVEL,
            "TenantId": tenant_id,
            "DeviceId": device.device_id,
            "UserId": user_id,
            "ThreatLevel": report["level"],
            "LastUpdateTime": report["detectedAt"],
        }
        message = new_message(
            tenant_id, "threat", device.device_id, [entity],
            level=report["level"], detectedAt=report["detectedAt"], threats=report["threats"], idempotencyKey=key,
        )
        replayed = False
        if key:
            body_digest = digest({k: v for k, v in report.items() if k != "idempotencyKey"})
            bound_id, bound_digest, claimed = await self._messages.store.claim_key(
                tenant_id, device.device_id, key, message.message_id, body_digest
            )
            if not claimed:
                if bound_digest != body_digest:
                    raise ConflictError("idempotencyKey was already used with a different threat report", status=409)
                existing = await self._messages.store.get(tenant_id, bound_id)
                if existing is not None and existing.status not in (NOT_SENT, REJECTED):
                    return existing, True
                if existing is not None:
                    message, replayed = existing, True
        sent = await self._messages.send(message, call("intune.upload_threat_level"), "threat")
        pointer = self._latest(sent)

        def newest(current: dict[str, Any] | None) -> dict[str, Any] | None:
            # Intune keeps the level with the latest LastUpdateTime (an older one is ignored), so does the pointer.
            if current is None or current.get("uploadId") == sent.message_id:
                return pointer
            ours, theirs = parse_iso(pointer["detectedAt"]), parse_iso(current.get("detectedAt"))
            return pointer if theirs is None or (ours is not None and ours >= theirs) else None

        await self._messages.store.update_latest(tenant_id, "threat", device.device_id, newest)
        await self._messages.counters.bump(tenant_id, "threatReportsAccepted")
        return sent, replayed

    async def latest(self, tenant_id: str, device_id: str) -> dict[str, Any] | None:
        """The device's latest threat report with its upload status (None when never reported).

        Raises:
            NotFoundError: unknown tenant or device not enrolled.
        """
        _, device = await self._messages.resolve(tenant_id, device_id)
        return await self._messages.store.get_latest(tenant_id, "threat", device.device_id)

    @staticmethod
    def _latest(message: UploadMessage) -> dict[str, Any]:
        return {
            "deviceId": message.device_id,
            "level": message.extra.get("level"),
            "detectedAt": message.extra.get("detectedAt"),
            "threats": message.extra.get("threats", []),
            "uploadId": message.message_id,
            "status": message.status,
            "errorDetail": message.error_detail,
            "reportedAt": message.upload_time,
            "settledAt": None,
        }

    async def _settled(self, message: UploadMessage, result: dict[str, Any]) -> None:
        if message.kind != "threat":
            return
        data = self._latest(message)
        data["settledAt"] = message.updated_at or None

        def settle_pointer(current: dict[str, Any] | None) -> dict[str, Any] | None:
            # Only the pointer of this very report is updated (compare-and-swap): a newer report that a PUT stored
            # meanwhile is never put back to this older one.
            if current is None or current.get("uploadId") == message.message_id:
                return data
            return None

        await self._messages.store.update_latest(message.tenant_id, "threat", message.device_id, settle_pointer)
        counter = "threatResultsSucceeded" if message.status == "Succeeded" else "threatResultsFailed"
        await self._messages.counters.bump(message.tenant_id, counter)
