"""bench/storage_meter.py books each Table request under table, kind and partition (what the fleet profile reads)."""

from __future__ import annotations

from azure.core.rest import HttpRequest

from bench.storage_meter import StorageMeter

BASE = "http://127.0.0.1:10002/devstoreaccount1"
TID = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"


def label(method: str, url: str, headers: dict[str, str] | None = None) -> str:
    return StorageMeter("px")._label(HttpRequest(method, url, headers=headers or {}))


def test_point_operations_name_the_partition_kind() -> None:
    assert label("GET", f"{BASE}/pxleases(PartitionKey='poll',RowKey='{TID}')") == "leases get poll"
    assert label("GET", f"{BASE}/pxcursors(PartitionKey='{TID}',RowKey='groups')") == "cursors get tenant"
    assert label("PUT", f"{BASE}/pxleases(PartitionKey='poll',RowKey='{TID}')", {"If-Match": "*"}) == \
        "leases update poll"
    assert label("PUT", f"{BASE}/pxtenants(PartitionKey='{TID}',RowKey='config')") == "tenants upsert tenant"
    assert label("DELETE", f"{BASE}/pxleases(PartitionKey='poll',RowKey='x')") == "leases delete poll"
    assert label("POST", f"{BASE}/pxtenants") == "tenants insert ?"


def test_queries_name_their_partition_or_a_scan() -> None:
    assert label("GET", f"{BASE}/pxtenants()?$filter=PartitionKey%20eq%20'{TID}'") == "tenants query tenant"
    assert label("GET", f"{BASE}/pxleases()?$filter=PartitionKey eq 'poll'") == "leases query poll"
    assert label("GET", f"{BASE}/pxtenants()") == "tenants query scan"
    assert label("POST", f"{BASE}/$batch") == "batch"
    assert label("POST", f"{BASE}/Tables") == "create_table"
