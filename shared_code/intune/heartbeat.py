"""Heartbeats: one ``PartnerTenantHeartbeat`` per provisioned tenant per timer run, isolated per tenant.

Without heartbeats Intune turns the connector **Unresponsive** after the admin's "Number of days until partner is
unresponsive" (mobile-threat-defense.md; reference/intune.md §5), so we beat far more often than that (design note 3)
and one tenant's failure never stops the others (Fleet: "one tenant's failure does not stop the others").

Per tenant: due when ``heartbeatIntervalMinutes`` passed since the last success (minus a little slack for timer
jitter) and any failure backoff elapsed. Failures back off exponentially from the tenant's interval, capped at
``MAX_BACKOFF_SECONDS``; 401/403 (token rejected, ``update_device_health`` missing, consent gone) mark the tenant
``consent_required``. Tenants not provisioned yet get a provisioning attempt first (self-healing after consent).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared_code import telemetry
from shared_code.adapters.intune import IntuneClient, IntuneNotProvisionedError
from shared_code.errors import (
    ConnectorCredentialError,
    ConsentRequiredError,
    FatalError,
    PermissionMissingError,
    RetriableError,
)
from shared_code.intune.discovery import TENANT_SERVICE, DiscoveryService
from shared_code.intune.provisioning import ProvisioningService
from shared_code.intune.status import (
    ActivityCounters,
    HeartbeatStatus,
    IntuneStatus,
    IntuneStatusWriter,
    heartbeat_of,
    intune_of,
    iso,
    parse_iso,
    permission_problem,
    permissions_of,
)
from shared_code.tenants import TenantRecord, TenantRepository

log = logging.getLogger("connector.intune.heartbeat")

SLACK_SECONDS = 90.0  # timer jitter: a beat due in the next 90 s is sent now rather than a whole period later
MAX_BACKOFF_SECONDS = 6 * 3600.0  # far below the unresponsive threshold (days)
# 2**16 × the smallest base (60 s) is far past MAX_BACKOFF_SECONDS; capping the exponent keeps the float finite
# (2.0**1024 overflows) however long a tenant keeps failing.
MAX_BACKOFF_EXPONENT = 16


def backoff_seconds(base: float, failures: int) -> float:
    """Delay before the next attempt after ``failures`` consecutive failures (exponential, capped)."""
    exponent = min(max(failures - 1, 0), MAX_BACKOFF_EXPONENT)
    return float(min(MAX_BACKOFF_SECONDS, base * (2**exponent)))


@dataclass
class HeartbeatRun:
    """What one timer run did."""

    sent: int = 0
    failed: int = 0
    skipped: int = 0
    consent_required: int = 0
    outcomes: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, int]:
        """Counts for logs and the run summary."""
        return {
            "heartbeats_sent": self.sent,
            "heartbeats_failed": self.failed,
            "heartbeats_skipped": self.skipped,
            "heartbeats_consent_required": self.consent_required,
        }


class HeartbeatService:
    """Sends heartbeats for every active tenant with bounded concurrency."""

    def __init__(
        self,
        *,
        tenants: TenantRepository,
        discovery: DiscoveryService,
        intune: IntuneClient,
        provisioning: ProvisioningService,
        counters: ActivityCounters,
        concurrency: int,
        now: Callable[[], float],
    ) -> None:
        self._tenants = tenants
        self._status = IntuneStatusWriter(tenants)
        self._discovery = discovery
        self._intune = intune
        self._provisioning = provisioning
        self._counters = counters
        self._concurrency = max(1, concurrency)
        self._now = now
        self.peak_in_flight = 0  # highest concurrency reached (tests assert the bound)
        self._in_flight = 0

    def due(self, record: TenantRecord, now: float) -> bool:
        """Whether the tenant's heartbeat is due (interval since last success, and backoff elapsed)."""
        section = heartbeat_of(record)
        next_attempt = parse_iso(section.get("nextAttemptAt"))
        if next_attempt is not None and now < next_attempt:
            return False
        last_success = parse_iso(section.get("lastSuccessAt"))
        if last_success is None:
            return True
        return now - last_success >= record.config.heartbeat_interval_minutes * 60 - SLACK_SECONDS

    async def run(self, *, force: bool = False) -> HeartbeatRun:
        """One timer run over all active tenants.

        Args:
            force: ignore the per-tenant interval and backoff (operator-triggered runs, tests).
        """
        result = HeartbeatRun()
        now = self._now()
        records = await self._tenants.list_active()
        semaphore = asyncio.Semaphore(self._concurrency)

        async def one(record: TenantRecord) -> None:
            async with semaphore:
                self._in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
                try:
                    outcome = await self.beat(record)
                except Exception:  # one tenant's bug must not stop the others
                    log.exception("heartbeat for tenant %s crashed", record.config.tenant_id)
                    outcome = "failed"
                finally:
                    self._in_flight -= 1
            result.outcomes[record.config.tenant_id] = outcome
            if outcome == "sent":
                result.sent += 1
            elif outcome == "consent_required":
                result.consent_required += 1
                result.failed += 1
            else:
                result.failed += 1

        due = [r for r in records if force or self.due(r, now)]
        result.skipped = len(records) - len(due)
        await asyncio.gather(*(one(r) for r in due))
        log.info("heartbeat run: %s", result.summary())
        return result

    async def beat(self, record: TenantRecord) -> str:
        """Heartbeat one tenant and record the outcome. Returns sent | failed | consent_required."""
        async with telemetry.unit(telemetry.HEARTBEAT, {"tenant_id": record.config.tenant_id}) as work:
            outcome = await self._beat(record)
            work.set(result=outcome)
            if outcome != "sent" and work.upstream_errors:
                log.warning("heartbeat for tenant %s: %s; upstream: %s", record.config.tenant_id, outcome,
                            work.upstream_summary())
            return outcome

    async def _beat(self, record: TenantRecord) -> str:
        tenant_id = record.config.tenant_id
        attempt_at = self._now()
        previous = heartbeat_of(record)
        failures = int(previous.get("consecutiveFailures", 0) or 0)
        try:
            if intune_of(record).get("state") != "provisioned":
                intune = await self._provisioning.ensure_provisioned(record.config, force=True)
                if intune.get("state") != "provisioned":
                    return await self._not_provisioned(record, attempt_at, failures, intune)
            try:
                response = await self._send(tenant_id)
            except IntuneNotProvisionedError:
                # Intune forgot the tenant (or it was deprovisioned elsewhere): provision again, then beat.
                intune = await self._provisioning.ensure_provisioned(record.config, force=True)
                if intune.get("state") != "provisioned":
                    return await self._not_provisioned(record, attempt_at, failures, intune)
                response = await self._send(tenant_id)
        except PermissionMissingError as exc:
            await self._status.permission(tenant_id, "heartbeat", exc.permission)
            return await self._failed(
                record, attempt_at, failures, permission_problem(exc.permission), "consent_required"
            )
        except ConsentRequiredError as exc:
            return await self._failed(record, attempt_at, failures, f"consent_required: {exc}", "consent_required")
        except ConnectorCredentialError as exc:
            # The connector's own credential (Key Vault), not this tenant: recorded without lengthening its backoff
            # (failures - 1 + 1), so the first run after the fix beats for every tenant.
            return await self._failed(record, attempt_at, failures - 1, f"connector_credential: {exc}", "failing")
        except (RetriableError, FatalError) as exc:
            return await self._failed(record, attempt_at, failures, f"{type(exc).__name__}: {exc}", "failing")
        patch: HeartbeatStatus = {
            "state": "ok",
            "lastAttemptAt": iso(attempt_at),
            "lastSuccessAt": iso(attempt_at),
            "consecutiveFailures": 0,
            "nextAttemptAt": None,
            "lastError": None,
            "resyncTimestamp": response.get("ResyncTimestamp"),
        }
        await self._status.heartbeat(tenant_id, patch)
        if permissions_of(record).get("heartbeat"):
            await self._status.permission(tenant_id, "heartbeat", None)
        await self._counters.bump(tenant_id, "heartbeatsSent")
        return "sent"

    async def _not_provisioned(
        self, record: TenantRecord, attempt_at: float, failures: int, intune: IntuneStatus
    ) -> str:
        # Provisioning failed on 401/403 (consent gone, update_device_health missing): consent_required, as a
        # heartbeat 401/403 would be; anything else (Intune down, no Intune service) is an ordinary failure.
        state = "consent_required" if intune.get("state") in ("permission_missing", "consent_required") else "failing"
        return await self._failed(record, attempt_at, failures, str(intune.get("problem")), state)

    async def _send(self, tenant_id: str) -> dict[str, Any]:
        return await self._discovery.call_service(
            tenant_id, TENANT_SERVICE, lambda url: self._intune.heartbeat(url, tenant_id)
        )

    async def _failed(self, record: TenantRecord, attempt_at: float, failures: int, error: str, state: str) -> str:
        failures += 1
        base = max(60.0, record.config.heartbeat_interval_minutes * 60.0)
        delay = backoff_seconds(base, failures)
        patch: HeartbeatStatus = {
            "state": state,
            "lastAttemptAt": iso(attempt_at),
            "consecutiveFailures": failures,
            "nextAttemptAt": iso(attempt_at + delay) if failures > 1 else None,
            "lastError": error[:500],
        }
        await self._status.heartbeat(record.config.tenant_id, patch)
        # The message prefix is the alert contract (infra/modules/alerts.bicep, docs/deploy.md "Alerts").
        log.warning("connector.heartbeat.failed tenant=%s state=%s: %s", record.config.tenant_id, state, error[:200])
        return "consent_required" if state == "consent_required" else "failed"
