"""Storage calls of a process, counted and timed per table, kind and partition (bench only).

A fleet node (bench/fleet.py) installs :func:`metered_storage` as its container's StorageClients: every Table and
Queue request the app sends goes through azure-core's ``raw_request_hook`` / ``raw_response_hook`` (the SDK's own
per-call hooks, no wrapper around the client), and is booked under ``table kind partition``:

* *kind*: ``get`` (point read), ``query`` (a filter or a scan), ``insert`` / ``update`` / ``upsert`` / ``delete``,
  ``batch`` (entity-group transaction), ``create_table``; queue requests under ``queue send`` / ``queue other``;
* *partition*: ``tenant`` when the PartitionKey is a tenant id (a GUID, possibly with a suffix), the literal key
  otherwise (``poll``, ``~connector`` …), ``scan`` for a query without a PartitionKey.

A quiet poll that touches a partition shared by the whole fleet shows up as, e.g., ``leases update poll``.
"""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import unquote

from shared_code.adapters.storage import StorageClients, client_options

_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_KEYS = re.compile(r"PartitionKey='((?:[^']|'')*)'")
_FILTER_PK = re.compile(r"PartitionKey eq '((?:[^']|'')*)'")


def _partition(value: str) -> str:
    return "tenant" if _GUID.match(value) else value


class StorageMeter:
    """Counts and round-trip seconds per ``table kind partition`` (see the module docstring)."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.calls: dict[str, int] = {}
        self.seconds: dict[str, float] = {}

    def _label(self, req: Any) -> str:
        url = unquote(req.url)
        path, _, query = url.partition("?")
        last = path.rsplit("/", 1)[-1]
        if last == "Tables" or last.startswith("Tables("):
            return "create_table"
        if last == "$batch":
            return "batch"
        table = last.split("(", 1)[0]
        if self.prefix and table.startswith(self.prefix):
            table = table[len(self.prefix):]
        keys = _KEYS.search(last)
        if keys is not None:
            pk = _partition(keys.group(1))
            kind = {"GET": "get", "DELETE": "delete", "MERGE": "update", "PATCH": "update", "PUT": "update"}.get(
                req.method, req.method.lower())
            if req.method in ("PUT", "PATCH", "MERGE") and not req.headers.get("If-Match"):
                kind = "upsert"
            return f"{table} {kind} {pk}"
        if req.method == "POST":
            return f"{table} insert ?"
        found = _FILTER_PK.search(query.replace("+", " "))
        return f"{table} query {_partition(found.group(1)) if found else 'scan'}"

    def hook(self, request: Any) -> None:
        """Before a Table request: remember what it is and when it left."""
        request.context["meter_label"] = self._label(request.http_request)
        request.context["meter_t0"] = time.perf_counter()

    def queue_hook(self, request: Any) -> None:
        """Before a Queue request (send, or anything else: create, properties)."""
        req = request.http_request
        sending = req.method == "POST" and req.url.split("?")[0].endswith("/messages")
        request.context["meter_label"] = "queue send" if sending else "queue other"
        request.context["meter_t0"] = time.perf_counter()

    def response_hook(self, response: Any) -> None:
        """After the response: count the call and add its round trip."""
        label = response.context.get("meter_label")
        t0 = response.context.get("meter_t0")
        if label is None or t0 is None:
            return
        self.calls[label] = self.calls.get(label, 0) + 1
        self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t0

    def snapshot(self) -> dict[str, dict[str, float]]:
        """``{label: {"calls": n, "seconds": s}}``."""
        return {k: {"calls": v, "seconds": round(self.seconds.get(k, 0.0), 3)} for k, v in sorted(self.calls.items())}


def metered_storage(connection: str, prefix: str, meter: StorageMeter) -> StorageClients:
    """StorageClients whose Table and Queue clients report every request to ``meter``."""
    from azure.data.tables.aio import TableServiceClient
    from azure.storage.queue import TextBase64EncodePolicy
    from azure.storage.queue.aio import QueueClient

    class MeteredStorage(StorageClients):
        def _table_service(self) -> TableServiceClient:
            if self._service is None:
                self._service = TableServiceClient.from_connection_string(
                    self._connection, raw_request_hook=meter.hook, raw_response_hook=meter.response_hook,
                    **client_options())
            return self._service

        def queue(self, name: str) -> QueueClient:
            return QueueClient.from_connection_string(
                self._connection, name, message_encode_policy=TextBase64EncodePolicy(),
                raw_request_hook=meter.queue_hook, raw_response_hook=meter.response_hook, **client_options())

    return MeteredStorage(connection, table_prefix=prefix)
