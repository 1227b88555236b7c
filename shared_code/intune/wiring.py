"""Composition of the Intune, MAM and SSO services from the container (``container().service(build_intune)``).

Tests replace the enrolled-device lookup with :func:`use_enrolled_devices` before the first use.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared_code.adapters.console_auth import SsoTokenValidator
from shared_code.adapters.intune import IntuneClient
from shared_code.adapters.tenant_store import build_tenant_repository
from shared_code.bootstrap import Container
from shared_code.identity.mam import MamService
from shared_code.identity.sso import SsoService
from shared_code.intune.devices import EnrolledDevices, StoreEnrolledDevices
from shared_code.intune.discovery import DiscoveryService
from shared_code.intune.heartbeat import HeartbeatService
from shared_code.intune.inventory import InventoryService
from shared_code.intune.messages import MessageService
from shared_code.intune.provisioning import ProvisioningService
from shared_code.intune.status import ActivityCounters
from shared_code.intune.threat import ThreatService
from shared_code.intune.uploads import UploadStore
from shared_code.tenants import TenantRepository


@dataclass
class IntuneServices:
    """Everything the Intune/identity HTTP routes and timers use."""

    tenants: TenantRepository
    intune: IntuneClient
    discovery: DiscoveryService
    provisioning: ProvisioningService
    heartbeat: HeartbeatService
    messages: MessageService
    threat: ThreatService
    inventory: InventoryService
    mam: MamService
    sso: SsoService
    counters: ActivityCounters


def build_enrolled_devices(c: Container) -> EnrolledDevices:
    """The enrolled-device lookup: the enrollment store's port (the one owner of table ``devices``)."""
    from shared_code.enrollment.store import TableEnrollmentStore

    return StoreEnrolledDevices(TableEnrollmentStore(c.storage))


def use_enrolled_devices(c: Container, devices: EnrolledDevices) -> None:
    """Install a device lookup in a container (tests) before the Intune services are built."""
    c._services[build_enrolled_devices] = devices


def build_intune(c: Container) -> IntuneServices:
    """Build (once per container) the Intune, MAM and SSO services."""
    s = c.settings
    tenants = c.service(build_tenant_repository)
    devices = c.service(build_enrolled_devices)

    def now() -> float:
        return c.clock.now()

    intune = IntuneClient(
        credentials=c.credentials,
        resource=s.intune_resource,
        service_domains=s.intune_service_domains,
        tenant_api_version=s.intune_tenant_api_version,
        device_api_version=s.intune_device_api_version,
        max_retries=s.graph_max_retries,
    )
    discovery = DiscoveryService(
        settings=s, graph_for=c.graph, tenants=tenants, now=now, forget_token=c.credentials.forget
    )
    counters = ActivityCounters(tenants)
    provisioning = ProvisioningService(
        tenants=tenants, discovery=discovery, intune=intune, graph_for=c.graph, now=now
    )
    heartbeat = HeartbeatService(
        tenants=tenants, discovery=discovery, intune=intune, provisioning=provisioning, counters=counters,
        concurrency=s.heartbeat_concurrency, now=now,
    )
    messages = MessageService(
        tenants=tenants, devices=devices, discovery=discovery, intune=intune, store=UploadStore(c.storage),
        counters=counters, now=now,
    )
    return IntuneServices(
        tenants=tenants,
        intune=intune,
        discovery=discovery,
        provisioning=provisioning,
        heartbeat=heartbeat,
        messages=messages,
        threat=ThreatService(messages),
        inventory=InventoryService(messages),
        mam=MamService(tenants=tenants, devices=devices, graph_for=c.graph),
        sso=SsoService(tenants=tenants, validator=SsoTokenValidator(s), graph_for=c.graph),
        counters=counters,
    )
