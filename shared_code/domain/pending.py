"""Objects Graph could not read yet (replication lag), kept with the tenant's cursor state and retried with backoff.

Pure: no I/O. Entra is eventually consistent: a member can appear in ``groups/delta`` before ``/users/{id}`` or its
``ownedDevices`` answer (404 ``Request_ResourceNotFound``), and a device can appear in ``devices/delta`` before its
object or its registered-owner link is readable
(https://devblogs.microsoft.com/identity/designing-for-eventual-consistency-for-microsoft-entra/). Such an object is
remembered here — persisted on the groups cursor row, so it is committed in the same write that moves the cursor past
the change that named it — and retried on later polls until Graph answers, or given up after a bound (a setting,
default 24 h) and reported.

Backoff without writes: an object is retried at ages 0, 1, 3, 7, 15, 31 and 63 minutes, then hourly; a poll retries
it when such a point fell since the previous poll started. A quiet poll therefore writes nothing, and costs the two
delta reads plus ⌈due/20⌉ ``$batch`` requests.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from shared_code.domain.timestamps import utc_iso

# What is pending: a user (its ownedDevices answered 404), a device (its object answered 404), or a device's owner
# link (the device answered without a registered owner right after it appeared).
USER, DEVICE, OWNER_LINK = "user", "device", "owner"
KINDS = frozenset({USER, DEVICE, OWNER_LINK})
BACKOFF_BASE_SECONDS = 60.0
BACKOFF_STEPS = 6  # doubling steps before the hourly cadence
HOURLY = 3600.0
OWNER_LINK_SECONDS = 3600.0
STATUS_SAMPLE = 10
MAX_PENDING = 400  # the cursor row carries them in one string property (≤ 32K characters); the oldest go first


@dataclass(frozen=True)
class Pending:
    """One object Graph could not read yet: its id, what kind of read failed, and since when (epoch seconds)."""

    id: str
    kind: str
    since: float


def encode(items: Iterable[Pending]) -> str:
    """Compact JSON for the cursor row (``[[id, kind, since], …]``; ``""`` when nothing is pending)."""
    rows = [[p.id, p.kind, round(p.since, 3)] for p in items]
    return json.dumps(rows, separators=(",", ":")) if rows else ""


def decode(text: str) -> tuple[Pending, ...]:
    """Inverse of :func:`encode`; unreadable data decodes to nothing (stored data never crash-loops a tenant)."""
    if not text:
        return ()
    try:
        rows: Any = json.loads(text)
    except ValueError:
        return ()
    out: list[Pending] = []
    for row in rows if isinstance(rows, list) else ():
        if (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str) and row[1] in KINDS
                and isinstance(row[2], int | float) and not isinstance(row[2], bool) and math.isfinite(row[2])):
            out.append(Pending(row[0], row[1], float(row[2])))
    return tuple(out)


def _step(age: float) -> int:
    """Index of the last retry point at or before ``age`` (−1 before the object was seen)."""
    if age < 0:
        return -1
    last_doubling = BACKOFF_BASE_SECONDS * (2**BACKOFF_STEPS - 1)
    if age < last_doubling:
        return math.floor(math.log2(age / BACKOFF_BASE_SECONDS + 1))
    return BACKOFF_STEPS + int((age - last_doubling) // HOURLY)


def due(item: Pending, now: float, previous: float | None) -> bool:
    """Whether a poll starting at ``now`` retries ``item`` (a retry point passed since the ``previous`` poll)."""
    if previous is None or previous < item.since:
        return True
    return _step(now - item.since) > _step(previous - item.since)


def give_up_after(item: Pending, give_up_seconds: float) -> float:
    """How long ``item`` is retried: the setting, but at most an hour for an owner link (most devices that answer
    without an owner simply have none; they are reported as ownerless, not as given up)."""
    return min(give_up_seconds, OWNER_LINK_SECONDS) if item.kind == OWNER_LINK else give_up_seconds


def split(items: Sequence[Pending], now: float, give_up_seconds: float) -> tuple[list[Pending], list[Pending]]:
    """(still pending, given up): objects pending longer than their bound (:func:`give_up_after`) are given up."""
    live = [p for p in items if now - p.since < give_up_after(p, give_up_seconds)]
    expired = [p for p in items if now - p.since >= give_up_after(p, give_up_seconds)]
    if len(live) > MAX_PENDING:
        live.sort(key=lambda p: p.since)
        expired += live[: len(live) - MAX_PENDING]
        live = live[len(live) - MAX_PENDING :]
    return live, expired


def merge(kept: Iterable[Pending], new: Iterable[Pending]) -> list[Pending]:
    """Kept objects plus new ones (an object already pending keeps its first ``since``), oldest first."""
    out: dict[tuple[str, str], Pending] = {(p.id, p.kind): p for p in kept}
    for p in new:
        out.setdefault((p.id, p.kind), p)
    return sorted(out.values(), key=lambda p: (p.since, p.id))


def after_poll(
    live: Iterable[Pending], answered: Iterable[Pending], new: Iterable[Pending], users_in_scope: Collection[str]
) -> list[Pending]:
    """What stays pending after a poll: the live objects Graph did not answer (a user only while still in scope),
    plus what this poll could not read."""
    done = {(p.id, p.kind) for p in answered}
    kept = [p for p in live if (p.id, p.kind) not in done and (p.kind != USER or p.id in users_in_scope)]
    return merge(kept, new)


def status(items: Sequence[Pending], now: float, gave_up: Sequence[Pending] = ()) -> dict[str, Any]:
    """The tenant status ``pending`` section: count, the oldest's age, a small sample, and what was given up."""
    oldest = min((p.since for p in items), default=None)
    return {
        "count": len(items),
        "oldestSince": utc_iso(oldest) if oldest is not None else None,
        "oldestAgeSeconds": int(now - oldest) if oldest is not None else None,
        "sample": [{"id": p.id, "kind": p.kind, "since": utc_iso(p.since)} for p in items[:STATUS_SAMPLE]],
        "gaveUp": len(gave_up),
        "gaveUpSample": [{"id": p.id, "kind": p.kind, "since": utc_iso(p.since)} for p in gave_up[:STATUS_SAMPLE]],
        "updatedAt": utc_iso(now),
    }
