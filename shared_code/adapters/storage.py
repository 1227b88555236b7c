"""Azure Storage clients (Tables and Queues) from ``AzureWebJobsStorage``.

Locally that is a connection string (Azurite); in Azure it is identity-based (``__credential=managedidentity`` +
``__clientId``, with the service URIs the Bicep sets or the account name in the configured cloud, see
``Settings.table_service_uri``), so shared keys can stay disabled on the account.
"""

from __future__ import annotations

import os
from typing import Any

from azure.data.tables.aio import TableClient, TableServiceClient
from azure.storage.queue import TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient

from shared_code.adapters.credentials import env_proxies

# The app's tables (docs/architecture.md "Storage"; change feed events live in ``devices``). infra/main.bicep creates
# exactly these (tests/infra). The prefix lets several deployments share one account in tests.
TABLES = ("tenants", "cursors", "memberships", "devices", "uploads", "leases")


def client_options() -> dict[str, Any]:
    """Transport options for every storage client: ``use_env_settings`` (aiohttp's ``trust_env``) only when a proxy
    is configured (:func:`~shared_code.adapters.credentials.env_proxies`). azure-core's default re-read ``~/.netrc``
    and the proxy environment in a worker thread on every table or queue call (bench/notes/issue9.md, "Fleet
    profile"); storage never uses netrc credentials."""
    return {"use_env_settings": env_proxies()}


def _managed_identity() -> Any:
    """The identity for identity-based storage, as the Functions host picks it: ``__credential=managedidentity``
    (what the Bicep sets) → that managed identity; otherwise the developer's identity (DefaultAzureCredential: Azure
    CLI login and friends), so the operator CLI reaches the same account from a workstation with the same settings."""
    from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential

    client_id = os.environ.get("AzureWebJobsStorage__clientId") or None
    if os.environ.get("AzureWebJobsStorage__credential", "").lower() == "managedidentity":
        return ManagedIdentityCredential(client_id=client_id)
    return DefaultAzureCredential(managed_identity_client_id=client_id)


class StorageClients:
    """Builds and caches storage clients for one process."""

    def __init__(
        self, connection: str, *, table_prefix: str = "", table_service_uri: str = "", queue_service_uri: str = ""
    ) -> None:
        """Use ``connection`` (a connection string) or, when it is empty, the two service URIs with the identity."""
        if not connection and not (table_service_uri and queue_service_uri):
            msg = "storage needs a connection string or both service URIs"
            raise ValueError(msg)
        self._connection = connection
        self._table_uri = table_service_uri
        self._queue_uri = queue_service_uri
        self._prefix = table_prefix
        self._tables: dict[str, TableClient] = {}
        self._service: TableServiceClient | None = None
        self._created: set[str] = set()
        self._senders: dict[str, QueueClient] = {}
        self._identity: Any = None

    def _credential(self) -> Any:
        # One managed-identity credential per process: each instance would fetch its own IMDS tokens.
        if self._identity is None:
            self._identity = _managed_identity()
        return self._identity

    def table_name(self, logical: str) -> str:
        """Physical table name for a logical one (prefix + name; Tables names are alphanumeric)."""
        return f"{self._prefix}{logical}"

    def _table_service(self) -> TableServiceClient:
        if self._service is None:
            if not self._connection:
                self._service = TableServiceClient(endpoint=self._table_uri, credential=self._credential(),
                                                   **client_options())
            else:
                self._service = TableServiceClient.from_connection_string(self._connection, **client_options())
        return self._service

    async def table(self, logical: str) -> TableClient:
        """A client for the logical table, created on first use (idempotent)."""
        name = self.table_name(logical)
        client = self._tables.get(name)
        if client is None:
            service = self._table_service()
            if name not in self._created:
                await service.create_table_if_not_exists(name)
                self._created.add(name)
            client = service.get_table_client(name)
            self._tables[name] = client
        return client

    def queue(self, name: str) -> QueueClient:
        """A queue client that base64-encodes messages, as the Functions queue trigger expects (azure.md §8)."""
        if not self._connection:
            return QueueClient(
                self._queue_uri,
                name,
                credential=self._credential(),
                message_encode_policy=TextBase64EncodePolicy(),
                **client_options(),
            )
        return QueueClient.from_connection_string(
            self._connection, name, message_encode_policy=TextBase64EncodePolicy(), **client_options()
        )

    def sender(self, name: str) -> QueueClient:
        """The process's client for sending to queue ``name`` (like :meth:`queue`, but kept open and reused).

        The dispatcher sends one message per due tenant: a client per message would open a new connection (a TLS
        handshake in Azure) for each. Callers must not close it; :meth:`close` does.
        """
        client = self._senders.get(name)
        if client is None:
            client = self._senders[name] = self.queue(name)
        return client

    async def close(self) -> None:
        """Close every client."""
        for client in self._tables.values():
            await client.close()
        for sender in self._senders.values():
            await sender.close()
        self._senders.clear()
        if self._service is not None:
            await self._service.close()
        if self._identity is not None:
            await self._identity.close()
            self._identity = None
        self._tables.clear()
        self._service = None
