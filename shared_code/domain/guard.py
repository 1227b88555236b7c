"""Deactivation guard: stop a mass or risky deactivation (an emptied or renamed group) until a human approves it.

Pure. Entra Connect's delete protection stops an export at 500 deletes and Entra provisioning stages deletes past its
accidental-deletion threshold (reference/graph.md §7); the connector stages when a plan would deactivate more than
``min(max_count, max_percent% of enrolled)`` devices. It also judges causes, not only counts: deactivations caused by
a configured enrollment group that no longer resolves (renamed, deleted, now ambiguous) — or that the poll could not
re-verify — are always staged, whatever their number (a 20 % threshold would let one renamed group of three silently
deactivate its devices). Enrolls and updates still apply.

Approval names a plan (its id, ``domain.consistency.plan_id``); a poll applies staged deactivations only when the plan
it has just recomputed from fresh reads has that id. Both poll paths decide through :func:`evaluate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

COUNT, CAUSE = "count", "cause"


def threshold(enrolled: int, max_count: int, max_percent: float) -> int:
    """Largest number of deactivations one poll may apply unapproved."""
    return min(max_count, math.floor(enrolled * max_percent / 100.0))


@dataclass(frozen=True)
class GuardDecision:
    """Outcome: apply the deactivations, or stage them (``why``: ``count`` or ``cause``)."""

    apply_deactivations: bool
    staged: int
    threshold: int
    approved: bool = False
    why: str = ""


def evaluate(
    deactivations: int,
    enrolled: int,
    *,
    max_count: int,
    max_percent: float,
    protected: int = 0,
    plan_id: str = "",
    approved_plan_id: str | None = None,
) -> GuardDecision:
    """Decide whether ``deactivations`` may be applied.

    Args:
        deactivations: deactivations the plan holds.
        enrolled: devices enrolled before the plan.
        max_count: the tenant's absolute cap (default 500).
        max_percent: the tenant's relative cap (default 20 %).
        protected: deactivations whose cause always needs approval (a configured group that no longer resolves, or
            a membership-derived deactivation the poll could not re-verify).
        plan_id: id of the plan's deactivations (``domain.consistency.plan_id``).
        approved_plan_id: the plan an admin approved; it applies only if it is exactly this plan.
    """
    limit = threshold(enrolled, max_count, max_percent)
    if deactivations == 0:
        return GuardDecision(True, 0, limit)
    if approved_plan_id is not None and approved_plan_id == plan_id:
        return GuardDecision(True, 0, limit, approved=True)
    if protected:
        return GuardDecision(False, deactivations, limit, why=CAUSE)
    if deactivations <= limit:
        return GuardDecision(True, 0, limit)
    return GuardDecision(False, deactivations, limit, why=COUNT)
