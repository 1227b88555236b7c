"""Deactivation guard: stop a mass deactivation (an emptied or renamed group) until a human approves it.

Pure. Entra Connect's delete protection stops an export at 500 deletes and Entra provisioning stages deletes past its
accidental-deletion threshold (reference/graph.md §7); the connector stages when a plan would deactivate more than
``min(max_count, max_percent% of enrolled)`` devices. Enrolls and updates still apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def threshold(enrolled: int, max_count: int, max_percent: float) -> int:
    """Largest number of deactivations one poll may apply unapproved."""
    return min(max_count, math.floor(enrolled * max_percent / 100.0))


@dataclass(frozen=True)
class GuardDecision:
    """Outcome: apply the deactivations, or stage them."""

    apply_deactivations: bool
    staged: int
    threshold: int
    approved: bool = False


def evaluate(
    deactivations: int,
    enrolled: int,
    *,
    max_count: int,
    max_percent: float,
    approved_count: int | None = None,
) -> GuardDecision:
    """Decide whether ``deactivations`` may be applied.

    Args:
        deactivations: deactivations the plan holds.
        enrolled: devices enrolled before the plan.
        max_count: the tenant's absolute cap (default 500).
        max_percent: the tenant's relative cap (default 20 %).
        approved_count: an admin approved a staged plan of this many deactivations. The approval covers a plan
            up to that size plus the normal allowance (a few more devices may have left meanwhile).
    """
    limit = threshold(enrolled, max_count, max_percent)
    if deactivations <= limit:
        return GuardDecision(True, 0, limit)
    if approved_count is not None and deactivations <= approved_count + limit:
        return GuardDecision(True, 0, limit, approved=True)
    return GuardDecision(False, deactivations, limit)
