"""The short fuzz run inside ``make test``: schemathesis on devhost + simulator + Azurite (``tests.fuzz.run``).

A subprocess (its own event loop and stack), budget: a few examples per operation, no stateful phase. ``make fuzz``
runs the same with ``--full``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.api.routes import documented_operations

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.fuzz
def test_short_fuzz_run_finds_no_server_error_and_no_schema_violation(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", "--max-examples", "5", "--workdir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False,
    )
    tail = "\n".join(result.stdout.splitlines()[-60:])
    assert "Test cases:" in result.stdout, tail  # schemathesis ran and printed its summary
    assert result.returncode == 0, tail
    summary = json.loads((tmp_path / "fuzz-summary.json").read_text())
    assert summary["server_errors"] == 0 and summary["schema_violations"] == 0, tail
    assert summary["failures"] == {}, tail
    # Every documented operation was exercised, and the positive cases reached real data (2xx) on most of them.
    documented = {f"{method} {path}" for method, path in documented_operations()}
    assert documented <= set(summary["operations"]), sorted(documented - set(summary["operations"]))
    succeeded = [op for op, figures in summary["operations"].items() if figures["statuses"].get("2xx")]
    assert len(succeeded) >= 10, sorted(summary["operations"])
