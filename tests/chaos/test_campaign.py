"""A few seeds of the randomized fault campaign (tests/chaos/campaign.py) in the fast suite; ``make chaos`` runs 200+.

Each seed is a whole run: small tenants provisioned through the API, seeded steps (mutations, polls, console calls,
faults, worker kills, Azurite restarts), faults stopped, a bounded convergence, then the per-tenant checks (stored
devices == ground truth, the feed replays to them without duplicates or gaps, nothing always-in-scope deactivated,
nobody stuck, a quiet poll after convergence is two Graph requests, no lease left held). The run's own simulator
and Azurite keep its clock jumps and restarts away from the other modules.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from devhost.azurite import start_azurite
from simulator import launch
from tests.chaos.campaign import Campaign, replay_command, run_seed
from tests.conftest import SimAdmin

# A few seeds of `make chaos` (each run draws its own mix: the assertion below names the faults when one fails).
FAST_SEEDS = (1, 3, 8)


@pytest.fixture(scope="module")
async def campaign(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Campaign]:
    workdir: Path = tmp_path_factory.mktemp("campaign")
    info, process = launch.start(workdir / "sim")
    sim = SimAdmin(info)
    azurite = start_azurite(workdir / "azurite")
    try:
        async with Campaign.open(sim, azurite, workdir) as opened:
            yield opened
    finally:
        azurite.stop()
        sim.http.close()
        launch.stop(process)


@pytest.mark.parametrize("seed", FAST_SEEDS)
async def test_a_seeded_chaos_run_converges_to_ground_truth(campaign: Campaign, seed: int) -> None:
    result = await run_seed(campaign, seed)
    assert result.faults, "the run injected no fault"
    detail: list[Any] = [*result.errors, f"faults: {dict(result.faults)}", "steps:", *result.steps,
                         f"replay: {replay_command(seed)}"]
    assert result.ok, "\n".join(map(str, detail))
    assert (result.lost, result.duplicates, result.diverged, result.wrongly_deactivated) == (0, 0, 0, 0)
