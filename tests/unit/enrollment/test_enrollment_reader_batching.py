"""Re-batching of inner ``$batch`` 429s (no middleware retries them; graph.md §3), with a fake of our own adapter."""

from __future__ import annotations

from typing import Any

import pytest

from shared_code.adapters.graph import BatchItem
from shared_code.enrollment.reader import DirectoryReader
from shared_code.errors import PermissionMissingError, RetriableError


class FakeGraph:
    """Answers batches from a script: per round, inner statuses by item position."""

    def __init__(self, rounds: list[dict[str, int]]) -> None:
        self.rounds = rounds
        self.calls: list[list[str]] = []

    async def batch(self, items: list[BatchItem], *, permission: str) -> dict[str, dict[str, Any]]:
        self.calls.append([i.url for i in items])
        script = self.rounds[min(len(self.calls), len(self.rounds)) - 1]
        out = {}
        for item in items:
            user = item.url.split("/")[2]
            status = script.get(user, 200)
            body = {"value": [{"id": f"dev-of-{user}", "operatingSystem": "iOS"}]} if status == 200 else {}
            headers = {"Retry-After": "0.25"} if status == 429 else {}
            out[item.id] = {"id": item.id, "status": status, "headers": headers, "body": body}
        return out


async def test_inner_429s_are_rebatched_after_the_longest_retry_after() -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    graph = FakeGraph([{"u2": 429, "u3": 429, "u4": 404}, {"u3": 429}, {}])
    reader = DirectoryReader(graph, sleep=sleep)  # type: ignore[arg-type]
    result = await reader.owned_devices(["u1", "u2", "u3", "u4"])
    assert result == {
        "u1": [{"id": "dev-of-u1", "operatingSystem": "iOS"}],
        "u2": [{"id": "dev-of-u2", "operatingSystem": "iOS"}],
        "u3": [{"id": "dev-of-u3", "operatingSystem": "iOS"}],
        "u4": None,  # the user is gone
    }
    assert [len(c) for c in graph.calls] == [4, 2, 1] and waits == [0.25, 0.25]


async def test_batches_hold_at_most_twenty_requests() -> None:
    graph = FakeGraph([{}])
    reader = DirectoryReader(graph)  # type: ignore[arg-type]
    users = [f"u{i}" for i in range(45)]
    assert len(await reader.owned_devices(users)) == 45
    assert [len(c) for c in graph.calls] == [20, 20, 5]


async def test_persistent_throttling_and_denied_items_raise_by_type() -> None:
    async def sleep(seconds: float) -> None:
        return None

    with pytest.raises(RetriableError):
        await DirectoryReader(FakeGraph([{"u1": 429}]), sleep=sleep).owned_devices(["u1"])  # type: ignore[arg-type]
    with pytest.raises(PermissionMissingError) as info:
        await DirectoryReader(FakeGraph([{"u1": 403}])).owned_devices(["u1"])  # type: ignore[arg-type]
    assert info.value.permission == "User.Read.All"
