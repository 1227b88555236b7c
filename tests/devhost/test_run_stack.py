"""scripts/run_stack.py (`make run`): one cycle ends with a JSON line; start failures exit non-zero, clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: int = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if k not in ("ONCE", "SCENARIO")}, **(env or {})}
    return subprocess.run(
        [sys.executable, "scripts/run_stack.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_once_prints_json_summary_last_and_exits_0(tmp_path):
    proc = _run("--once", "--port", "0", "--state-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # How to try the API and the CLI: a token file, two ready curl commands, the CLI's settings file.
    token = (tmp_path / "console-token.txt").read_text().strip()
    assert token.count(".") == 2
    curls = [line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("curl ")]
    assert len(curls) == 2 and all(f"$(cat {tmp_path / 'console-token.txt'})" in c for c in curls)
    assert "/sync?dryRun=true" in curls[1]
    settings = (tmp_path / "stack.env").read_text()
    assert "AzureWebJobsStorage=" in settings and "POLL_QUEUE_NAME=" in settings
    last = proc.stdout.strip().splitlines()[-1]
    summary = json.loads(last)
    for key in (
        "tenants",
        "devices_enrolled",
        "devices_expected",
        "heartbeats_sent",
        "threat_reports_accepted",
        "inventories_fetched",
    ):
        assert isinstance(summary[key], int), key
    assert summary["devices_expected"] > 0  # the simulator's ground truth for the small scenario


def test_component_failure_exits_1_with_message(tmp_path):
    proc = _run("--once", "--port", "0", env={"AZURITE_BIN": str(tmp_path / "no-azurite")}, timeout=120)
    assert proc.returncode == 1
    assert "run_stack: error: Azurite failed to start: azurite executable not found" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not proc.stdout.strip().startswith("{")  # no summary when the stack did not start


def test_bad_arguments_exit_2():
    proc = _run("--scenario", "huge", timeout=60)
    assert proc.returncode == 2
    assert "--scenario must be one of" in proc.stderr
