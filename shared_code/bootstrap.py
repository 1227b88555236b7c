"""The one composition root. Builds adapters from settings lazily (nothing at import time: Flex has a 30 s init
budget and msgraph is large), and memoizes feature services built by their own factories:

    enrollment = container().service(build_enrollment_service)

Tests build their own :class:`Container` (pointing at the simulator and Azurite, or with fakes) and install it with
:func:`use_container`; production code only calls :func:`container`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from shared_code.adapters.credentials import SecretSource, StaticSecret, TenantCredentials
from shared_code.adapters.graph import GraphClient, SharedPool
from shared_code.adapters.http_retry import UsageMeter
from shared_code.adapters.pacer import GraphPacer
from shared_code.adapters.storage import StorageClients
from shared_code.cloud import cloud_profile
from shared_code.settings import Settings

T = TypeVar("T")


class ConsoleAuth(Protocol):
    """Validates console bearer tokens (implemented in shared_code/adapters/console_auth.py)."""

    async def authenticate(self, authorization: str | None, role: str) -> dict[str, Any]:
        """Return the caller's claims, or raise AuthenticationError / ForbiddenError."""
        ...


class Clock(Protocol):
    """Wall clock seam (tests move time)."""

    def now(self) -> float:
        """Seconds since the epoch."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        """Seconds since the epoch."""
        return time.time()


class Container:
    """Adapters and services for one process."""

    def __init__(
        self,
        settings: Settings,
        *,
        secret_source: SecretSource | None = None,
        console_auth: ConsoleAuth | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self._secret_source = secret_source
        self._console_auth = console_auth
        self._credentials: TenantCredentials | None = None
        self._storage: StorageClients | None = None
        self._pacer: GraphPacer | None = None
        self._graph_pool: SharedPool | None = None
        self._services: dict[Callable[[Container], Any], Any] = {}

    @property
    def secret_source(self) -> SecretSource:
        """The connector credential's source: Key Vault when configured, else the local secret setting."""
        if self._secret_source is None:
            if self.settings.key_vault_url:
                from shared_code.adapters.keyvault import KeyVaultSecret

                self._secret_source = KeyVaultSecret(self.settings)
            else:
                self._secret_source = StaticSecret(self.settings.client_secret)
        return self._secret_source

    @property
    def credentials(self) -> TenantCredentials:
        """Token source for customer tenants."""
        if self._credentials is None:
            self._credentials = TenantCredentials(
                client_id=self.settings.client_id,
                authority_host=self.settings.authority_host,
                secret_source=self.secret_source,
                credential_type=self.settings.credential_type,
            )
        return self._credentials

    @property
    def storage(self) -> StorageClients:
        """Tables and queues."""
        if self._storage is None:
            self._storage = StorageClients(
                self.settings.storage_connection,
                table_prefix=self.settings.table_prefix,
                table_service_uri=self.settings.table_service_uri,
                queue_service_uri=self.settings.queue_service_uri,
            )
        return self._storage

    @property
    def console_auth(self) -> ConsoleAuth:
        """Inbound JWT validation for the console API."""
        if self._console_auth is None:
            from shared_code.adapters.console_auth import JwtConsoleAuth

            self._console_auth = JwtConsoleAuth(self.settings)
        return self._console_auth

    @property
    def graph_pacer(self) -> GraphPacer | None:
        """The process's Graph pacer (one per process: its share of the app budget); None when turned off."""
        s = self.settings
        if self._pacer is None and s.graph_pacer_instances > 0:
            self._pacer = GraphPacer(app_ru_per_window=s.graph_app_ru_per_20s, instances=s.graph_pacer_instances,
                                     tenant_ru_per_window=s.graph_tenant_ru_per_10s)
        return self._pacer

    def graph(self, tenant_id: str, meter: UsageMeter | None = None) -> GraphClient:
        """A Graph client for one customer tenant (callers close it; each poll gets its own meter).

        Every client of the process sends on one connection pool (kept-alive TLS connections to Graph).
        """
        if self._graph_pool is None:
            self._graph_pool = SharedPool()
        return GraphClient(
            tenant_id=tenant_id,
            credentials=self.credentials,
            base_url=self.settings.graph_base_url,
            max_retries=self.settings.graph_max_retries,
            meter=meter,
            pacer=self.graph_pacer,
            scope=f"{cloud_profile(self.settings.cloud).graph_base_url}/.default",
            transport=self._graph_pool,
        )

    def service(self, factory: Callable[[Container], T]) -> T:
        """Build a feature service once per container with its own factory."""
        if factory not in self._services:
            self._services[factory] = factory(self)
        result: T = self._services[factory]
        return result

    async def close(self) -> None:
        """Release clients."""
        if self._credentials is not None:
            await self._credentials.close()
        if self._storage is not None:
            await self._storage.close()
        if self._graph_pool is not None:
            await self._graph_pool.close()
            self._graph_pool = None


_current: Container | None = None


def container() -> Container:
    """The process's container, built from app settings on first use."""
    global _current
    if _current is None:
        _current = Container(Settings.from_env())
    return _current


def use_container(new: Container | None) -> None:
    """Install a container (tests, devhost) or clear it (None) so the next call rebuilds from settings."""
    global _current
    _current = new
