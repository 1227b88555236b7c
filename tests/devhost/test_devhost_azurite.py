"""devhost.azurite: free ports, readiness, restart on the same ports with the data kept, no process left behind."""

from __future__ import annotations

import os

import pytest
from azure.storage.queue import QueueServiceClient

from devhost import AzuriteError, start_azurite


def test_start_and_stop_leaves_nothing_behind(azurite):
    second = start_azurite()
    try:
        assert second.queue_port != azurite.queue_port  # two instances side by side, OS-chosen ports
        assert f"QueueEndpoint=http://127.0.0.1:{second.queue_port}/devstoreaccount1;" in second.connection_string
        with QueueServiceClient.from_connection_string(second.connection_string) as qs:
            qs.create_queue("probe")
            assert [q.name for q in qs.list_queues()] == ["probe"]
            qs.get_queue_client("probe").send_message("kept")
        # An emulator restart: same ports and data, a new process.
        old_pid, ports = second.process.pid, (second.blob_port, second.queue_port, second.table_port)
        second.restart()
        assert (second.blob_port, second.queue_port, second.table_port) == ports and second.process.pid != old_pid
        with pytest.raises(ProcessLookupError):
            os.killpg(old_pid, 0)
        with QueueServiceClient.from_connection_string(second.connection_string) as qs:
            assert [m.content for m in qs.get_queue_client("probe").peek_messages()] == ["kept"]
        pid, location = second.process.pid, second.location
    finally:
        second.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the whole process group is gone
    assert not location.exists()
    second.stop()  # idempotent


def test_missing_binary_is_a_clear_error(tmp_path):
    with pytest.raises(AzuriteError, match="azurite executable not found"):
        start_azurite(azurite_bin=tmp_path / "nope")
