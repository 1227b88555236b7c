"""Queue triggers on Azurite with host.json semantics, and raw SDK round-trips (queue + table) on Azurite."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid

from azure.data.tables import TableServiceClient, UpdateMode
from azure.storage.queue import BinaryBase64DecodePolicy, QueueClient, TextBase64EncodePolicy

from tests.devhost import devhost_sample_app as sample


def _sender(conn: str, queue: str) -> QueueClient:
    # The trigger expects base64 by default; QueueClient does not encode unless told (azure.md §8).
    return QueueClient.from_connection_string(conn, queue, message_encode_policy=TextBase64EncodePolicy())


def _peek_poison(conn: str, queue: str) -> list[str]:
    with QueueClient.from_connection_string(conn, f"{queue}-poison") as q:
        return [m.content for m in q.peek_messages(max_messages=32)]


async def test_base64_round_trip_success_deletes(make_host, azurite, queue_name):
    host = await make_host()
    with _sender(azurite.connection_string, queue_name) as q:
        for n in range(6):
            q.send_message(json.dumps({"action": "ok", "n": n, "text": "héllo"}))
    remaining = await host.drain_queues(timeout=30)
    assert remaining == {queue_name: 0}
    assert sorted(d["n"] for d in sample.RECORD["work_ok"]) == list(range(6))
    assert all(d["text"] == "héllo" for d in sample.RECORD["work_ok"])
    assert all(r["dequeue_count"] == 1 for r in sample.RECORD["work"])
    stats = host.stats["work"]
    assert (stats.invocations, stats.successes, stats.failures, stats.poisoned) == (6, 6, 0, 0)
    assert await host.queue_counts() == {queue_name: 0, f"{queue_name}-poison": 0}


async def test_failure_retries_then_poison_after_max_dequeue_count(make_host, azurite, queue_name):
    host = await make_host()
    body = json.dumps({"action": "fail", "id": "m1"})
    with _sender(azurite.connection_string, queue_name) as q:
        q.send_message(body)
    await host.drain_queues(timeout=30)
    # host.json maxDequeueCount 3: three attempts, each seeing the growing dequeue count, then the poison queue.
    assert [r["dequeue_count"] for r in sample.RECORD["work"]] == [1, 2, 3]
    assert len({r["id"] for r in sample.RECORD["work"]}) == 1
    stats = host.stats["work"]
    assert (stats.invocations, stats.failures, stats.poisoned) == (3, 3, 1)
    assert "asked to fail" in (stats.last_error or "")
    poison = _peek_poison(azurite.connection_string, queue_name)
    assert len(poison) == 1
    assert base64.b64decode(poison[0]).decode() == body  # same encoding as the source queue


async def test_malformed_json_body_goes_to_poison_without_hanging(make_host, azurite, queue_name):
    host = await make_host()
    with _sender(azurite.connection_string, queue_name) as q:
        q.send_message("{not json")
        q.send_message(json.dumps({"action": "ok", "n": 1}))
    await host.drain_queues(timeout=30)
    assert host.stats["work"].poisoned == 1
    assert host.stats["work"].failures == 3
    assert "JSONDecodeError" in (host.stats["work"].last_error or "")
    assert [d["n"] for d in sample.RECORD["work_ok"]] == [1]


async def test_invalid_base64_is_poisoned_without_invocation(make_host, azurite, queue_name):
    host = await make_host()
    with QueueClient.from_connection_string(azurite.connection_string, queue_name) as q:  # no encode policy
        q.send_message("this is not base64 !!")
    await host.drain_queues(timeout=30)
    assert sample.RECORD["work"] == []
    assert host.stats["work"].invocations == 0
    assert host.stats["work"].poisoned == 1
    assert _peek_poison(azurite.connection_string, queue_name) == ["this is not base64 !!"]


async def test_message_encoding_none(make_host, azurite, queue_name):
    host_json = {"extensions": {"queues": {"messageEncoding": "none", "maxDequeueCount": 2}}}
    host = await make_host(host_json=host_json)
    with QueueClient.from_connection_string(azurite.connection_string, queue_name) as q:
        q.send_message(json.dumps({"action": "ok", "n": 7}))
    await host.drain_queues(timeout=30)
    assert sample.RECORD["work_ok"] == [{"action": "ok", "n": 7}]


async def test_batches_respect_batch_size(make_host, azurite, queue_name):
    host = await make_host(host_json={"extensions": {"queues": {"batchSize": 2, "newBatchThreshold": 0}}})
    with _sender(azurite.connection_string, queue_name) as q:
        for n in range(5):
            q.send_message(json.dumps({"action": "ok", "n": n}))
    await host.drain_queues(timeout=30)
    assert sorted(d["n"] for d in sample.RECORD["work_ok"]) == [0, 1, 2, 3, 4]
    assert host._pollers["work"].polls >= 3  # 5 messages, at most 2 per receive


def test_queue_sdk_round_trip_on_azurite(azurite):
    name = f"rt-{uuid.uuid4().hex[:10]}"
    with QueueClient.from_connection_string(
        azurite.connection_string,
        name,
        message_encode_policy=TextBase64EncodePolicy(),
        message_decode_policy=BinaryBase64DecodePolicy(),
    ) as q:
        q.create_queue()
        q.send_message("x" * 49_152)  # ~48 KiB raw fits the 64 KiB encoded limit (azure.md §8)
        msgs = list(q.receive_messages(max_messages=1))
        assert len(msgs) == 1 and msgs[0].content == b"x" * 49_152 and msgs[0].dequeue_count == 1
        q.delete_message(msgs[0])
        assert q.get_queue_properties().approximate_message_count == 0
        q.delete_queue()


def test_table_sdk_round_trip_on_azurite(azurite):
    name = f"rt{uuid.uuid4().hex[:10]}"
    with TableServiceClient.from_connection_string(azurite.connection_string) as svc:
        table = svc.create_table(name)
        table.upsert_entity({"PartitionKey": "t1", "RowKey": "d1", "state": "enrolled", "n": 1})
        table.upsert_entity({"PartitionKey": "t1", "RowKey": "o'brien", "state": "deactivated", "n": 2})
        got = table.get_entity("t1", "d1")
        assert got["state"] == "enrolled"
        got["n"] = 5
        table.update_entity(got, mode=UpdateMode.MERGE)
        rows = list(
            table.query_entities("PartitionKey eq @pk and state eq @s", parameters={"pk": "t1", "s": "enrolled"})
        )
        assert [(r["RowKey"], r["n"]) for r in rows] == [("d1", 5)]
        assert table.get_entity("t1", "o'brien")["n"] == 2
        svc.delete_table(name)


async def test_visibility_timeout_delays_retry_and_drain_waits_for_it(make_host, azurite, queue_name):
    host = await make_host(
        host_json={"extensions": {"queues": {"visibilityTimeout": "00:00:01", "maxDequeueCount": 2}}}
    )
    with _sender(azurite.connection_string, queue_name) as q:
        q.send_message(json.dumps({"action": "fail"}))
        for _ in range(400):
            if host.stats["work"].failures == 1 and host._pollers["work"].in_flight == 0:
                break
            await asyncio.sleep(0.01)
        # Released with visibilityTimeout 1 s: still in the queue, but not visible yet.
        assert q.peek_messages(max_messages=1) == []
        assert q.get_queue_properties().approximate_message_count == 1
    await host.drain_queues(timeout=30)  # counts invisible messages, so it waits for the retry
    assert [r["dequeue_count"] for r in sample.RECORD["work"]] == [1, 2]
    assert host.stats["work"].poisoned == 1


async def test_drain_of_visible_messages_leaves_a_delayed_one_for_later(make_host, azurite, queue_name):
    host = await make_host()
    with _sender(azurite.connection_string, queue_name) as q:
        q.send_message(json.dumps({"action": "ok", "n": 1}), visibility_timeout=600)
        q.send_message(json.dumps({"action": "ok", "n": 2}))
        remaining = await host.drain_queues(timeout=30, visible_only=True)
        assert remaining == {queue_name: 1}  # the delayed message is still there, not waited for
        assert [d["n"] for d in sample.RECORD["work_ok"]] == [2]
        assert q.peek_messages(max_messages=1) == []


async def test_str_annotated_queue_trigger_gets_the_text(azurite, queue_name):
    import azure.functions as func

    from devhost import DevHost

    app = func.FunctionApp()
    got: list[object] = []

    @app.queue_trigger(arg_name="body", queue_name="%Q%", connection="AzureWebJobsStorage")
    async def as_text(body: str) -> None:
        got.append(body)

    async with DevHost(app, {"Q": queue_name, "AzureWebJobsStorage": azurite.connection_string}, port=0) as host:
        with _sender(azurite.connection_string, queue_name) as q:
            q.send_message("plain text ✓")
        await host.drain_queues(timeout=30)
    assert got == ["plain text ✓"]
