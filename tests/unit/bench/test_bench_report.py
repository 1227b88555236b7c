"""The benchmark report's target verdicts (bench/report.py) from a results document: counts in, verdicts out."""

from __future__ import annotations

from typing import Any

from bench.report import targets_section


def stack(scenario: str, *, wall: float, drained: bool, requests: int, ru: int, longest: float) -> dict[str, Any]:
    full = {"wall_s": wall, "drained": drained, "requests": requests, "ru": ru, "peak_rss_mb": 200.0,
            "invocations": {"count": 3, "longest_s": longest}}
    return {"scenario": scenario, "counts": {"users": 1, "devices": 1},
            "bound": {"requests": 100, "ru": 200, "plan": "users_expand_owned"},
            "phases": {"full": full, "quiet": {"requests": 2, "entity_writes": 0}},
            "checks": {"after_full": {"equal": drained}}}


def verdicts(results: dict[str, Any]) -> dict[str, str]:
    rows = [line.split(" | ") for line in targets_section(results) if line.startswith("| ") and "---" not in line]
    return {r[0].lstrip("| "): r[2].rstrip(" |") for r in rows[1:]}


def test_a_run_stopped_at_the_cap_is_not_met_and_unmeasured_targets_say_so() -> None:
    results = {"entries": {
        "stack:M": stack("M", wall=2, drained=True, requests=170, ru=260, longest=2),
        "stack:scale": stack("scale", wall=1800, drained=False, requests=400, ru=700, longest=600),
    }}
    v = verdicts(results)
    assert v["scale converges ≤ 3 min wall"] == "**not met**"
    assert v["XL converges ≤ 10 min wall"] == "not measured"
    assert v["no invocation > 2 min (scale, XL)"] == "**not met**"
    assert v["ground truth == stored state"] == "**not met**"
    # Only M drained, and M is left out of the ratio verdicts: nothing to judge.
    assert v["full reconcile requests ≤ 1.15 × lower bound"] == "not measured"
    assert v["quiet poll ≤ 2 requests and 0 writes"] == "**met**"


def test_ratios_against_the_lower_bound() -> None:
    results = {"entries": {"stack:scale": stack("scale", wall=150, drained=True, requests=114, ru=230, longest=60)}}
    v = verdicts(results)
    assert v["scale converges ≤ 3 min wall"] == "**met**"
    assert v["full reconcile requests ≤ 1.15 × lower bound"] == "**met**"  # 1.14×
    assert v["full reconcile RU ≤ 1.10 × lower bound"] == "**not met**"  # 1.15×
