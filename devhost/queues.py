"""Queue triggers: poll Azurite with the Functions host's queue semantics.

Sources: functions-bindings-storage-queue-trigger ("Poison messages", "Polling algorithm", "Concurrency") and
functions-bindings-storage-queue#hostjson-settings. What devhost reproduces:

- fetch ``batchSize`` messages at a time, fetch again once in-flight drops to ``newBatchThreshold``;
- messages are received invisible for 10 minutes (the host's lease) and deleted on success;
- on failure the message is made visible again after ``visibilityTimeout``; once its dequeue count reaches
  ``maxDequeueCount`` it is copied to ``<queue>-poison`` and deleted;
- ``messageEncoding`` base64 (default): a message that is not valid base64 is moved to the poison queue at once,
  without invoking the function (Azure/azure-sdk-for-net PR #18326, WebJobs storage extension 5.x);
- empty polls back off exponentially from a fast local minimum up to ``maxPollingInterval``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from azure.core.exceptions import ResourceExistsError
from azure.functions.queue import QueueMessage as FunctionsQueueMessage
from azure.storage.queue import QueueMessage as StorageQueueMessage
from azure.storage.queue.aio import QueueClient

from devhost.config import QueueOptions

log = logging.getLogger("devhost.queues")

# The host leases a message for 10 minutes while the function runs (WebJobs QueueProcessor default).
LEASE_SECONDS = 600
MIN_POLLING_INTERVAL = 0.05  # local: much faster than Azure's first back-off step, keeps tests and `make run` snappy


class DecodeError(ValueError):
    """The raw queue message does not match ``messageEncoding``."""


def decode_body(content: Any, encoding: str) -> bytes:
    """Decode a raw queue message as the trigger does for ``messageEncoding``.

    Raises:
        DecodeError: base64 expected but the content is not valid base64.
    """
    text = content.decode() if isinstance(content, bytes) else str(content or "")
    if encoding == "none":
        return text.encode("utf-8")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecodeError(f"message is not valid base64 (messageEncoding=base64): {exc}") from exc


class QueuePoller:
    """Polls one queue for one function."""

    def __init__(
        self,
        *,
        function_name: str,
        queue_name: str,
        connection_string: str,
        options: QueueOptions,
        invoke: Callable[[FunctionsQueueMessage], Awaitable[bool]],
        on_poison: Callable[[str], None],
        max_polling_interval: float | None = None,
    ) -> None:
        """Create a poller.

        Args:
            function_name: for logs.
            queue_name: resolved queue name.
            connection_string: storage connection string.
            options: host.json queue options.
            invoke: runs the function; returns True on success (never raises).
            on_poison: called with a reason whenever a message goes to the poison queue.
            max_polling_interval: local cap on the idle back-off (None: host.json maxPollingInterval).
        """
        self.function_name = function_name
        self.queue_name = queue_name
        self.poison_queue_name = f"{queue_name}-poison"
        self.options = options
        self._invoke = invoke
        self._on_poison = on_poison
        self._max_interval = min(options.max_polling_interval, max_polling_interval or options.max_polling_interval)
        self._client = QueueClient.from_connection_string(connection_string, queue_name)
        self._poison_client = QueueClient.from_connection_string(connection_string, self.poison_queue_name)
        self._poison_created = False
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.in_flight = 0
        self.receiving = False
        self.polls = 0

    async def start(self) -> None:
        """Create the queue if missing and start polling."""
        with contextlib.suppress(ResourceExistsError):
            await self._client.create_queue()
        self._task = asyncio.create_task(self._loop(), name=f"devhost-queue-{self.function_name}")

    def wake(self) -> None:
        """Poll now instead of waiting out the back-off (used by ``drain_queues``)."""
        self._wake.set()

    async def approximate_count(self) -> int:
        """Messages in the queue, visible or not (Get Queue Metadata ``x-ms-approximate-messages-count``)."""
        props = await self._client.get_queue_properties()
        return int(props.approximate_message_count or 0)

    async def has_visible(self) -> bool:
        """Whether a message can be received now (Peek Messages sees visible messages only)."""
        return bool(await self._client.peek_messages(max_messages=1))

    async def stop(self, grace: float = 10.0) -> None:
        """Stop polling, let running invocations finish (up to ``grace`` seconds), close clients."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        await self._client.close()
        await self._poison_client.close()

    async def _loop(self) -> None:
        delay = MIN_POLLING_INTERVAL
        batch = self.options.batch_size
        threshold = self.options.new_batch_threshold
        while True:
            if self.in_flight > threshold:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            # While a receive is under way a message may be invisible without being in flight yet.
            self.receiving = True
            try:
                self.polls += 1
                messages = [
                    m
                    async for m in self._client.receive_messages(
                        messages_per_page=batch, max_messages=batch, visibility_timeout=LEASE_SECONDS
                    )
                ]
            except asyncio.CancelledError:
                self.receiving = False
                raise
            except Exception as exc:  # noqa: BLE001 - storage hiccups must not kill the poller
                log.warning("queue %s: receive failed: %r", self.queue_name, exc)
                messages = []
            if messages:
                delay = MIN_POLLING_INTERVAL
                for m in messages:
                    self.in_flight += 1
                    task = asyncio.create_task(self._process(m))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                self.receiving = False
                continue
            self.receiving = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            if self._wake.is_set():
                self._wake.clear()
                delay = MIN_POLLING_INTERVAL
            else:
                delay = min(delay * 2, self._max_interval)

    async def _process(self, m: StorageQueueMessage) -> None:
        try:
            max_dequeue = self.options.max_dequeue_count
            if m.dequeue_count is not None and m.dequeue_count > max_dequeue:
                # Leased before but never completed (crash): the host poisons it without another run.
                await self._poison(m, f"dequeue count {m.dequeue_count} exceeds maxDequeueCount {max_dequeue}")
                return
            try:
                body = decode_body(m.content, self.options.message_encoding)
            except DecodeError as exc:
                await self._poison(m, str(exc))
                return
            # The worker's concrete QueueMessage (azure.functions.queue) carries dequeue_count and the timestamps.
            message = FunctionsQueueMessage(  # type: ignore[no-untyped-call]
                id=m.id,
                body=body,
                dequeue_count=m.dequeue_count,
                expiration_time=m.expires_on,
                insertion_time=m.inserted_on,
                time_next_visible=m.next_visible_on,
                pop_receipt=m.pop_receipt,
            )
            ok = await self._invoke(message)
            if ok:
                await self._client.delete_message(m.id, m.pop_receipt)
            elif (m.dequeue_count or 0) >= max_dequeue:
                await self._poison(m, f"failed {m.dequeue_count} times (maxDequeueCount {max_dequeue})")
            else:
                # Release: visible again after host.json visibilityTimeout (the retry gap).
                await self._client.update_message(
                    m.id, m.pop_receipt, visibility_timeout=math.ceil(self.options.visibility_timeout)
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a storage error on one message must not stop the others
            log.warning("queue %s: handling message %s failed: %r", self.queue_name, m.id, exc)
            # Do not keep it leased for 10 minutes: let it come back like a failed invocation.
            with contextlib.suppress(Exception):
                await self._client.update_message(
                    m.id, m.pop_receipt, visibility_timeout=math.ceil(self.options.visibility_timeout)
                )
        finally:
            self.in_flight -= 1
            self._slot_freed.set()

    async def _poison(self, m: StorageQueueMessage, reason: str) -> None:
        if not self._poison_created:
            with contextlib.suppress(ResourceExistsError):
                await self._poison_client.create_queue()
            self._poison_created = True
        # Raw copy: the content is already in the queue's encoding, as the host writes it.
        await self._poison_client.send_message(m.content)
        await self._client.delete_message(m.id, m.pop_receipt)
        log.warning(
            "Message has reached MaxDequeueCount or cannot be processed: moving %s to queue '%s' (%s)",
            m.id,
            self.poison_queue_name,
            reason,
        )
        self._on_poison(reason)
