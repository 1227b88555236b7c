"""`python -m simulator` as a process: info file per contract, clean SIGTERM/SIGINT, bad CLI input, parent watch."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from simulator.launch import REPO_ROOT, start, stop

CONTRACT_KEYS = {"base_url", "ca_path", "pid", "authority", "graph_base_url", "key_vault_url", "intune_resource",
                 "connector", "console", "tenants"}


def test_info_file_and_sigterm(tmp_path: Path, sim_info: dict[str, Any]) -> None:
    assert set(sim_info) >= CONTRACT_KEYS
    assert sim_info["base_url"].startswith("https://localhost:")
    assert {"client_id", "client_secret", "secret_name"} <= set(sim_info["connector"])
    assert {"client_id", "client_secret", "audience", "tenant_id"} <= set(sim_info["console"])
    assert sim_info["tenants"][0]["enrollment_groups"]
    info, proc = start(tmp_path)  # no tenants
    assert info["tenants"] == [] and info["pid"] == proc.pid
    assert Path(info["ca_path"]).read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert not list(tmp_path.glob("*.tmp"))
    assert stop(proc) == 0  # SIGTERM → clean exit


def test_sigint_exits_cleanly(tmp_path: Path) -> None:
    _, proc = start(tmp_path)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 0


def test_bad_cli_arguments() -> None:
    for args in (["--port", "70000"], ["--tenants", "2"], ["--tenants", "-1", "--scenario", "small"]):
        r = subprocess.run([sys.executable, "-m", "simulator", *args], cwd=REPO_ROOT, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 2 and "error" in r.stderr


def test_exits_when_parent_is_gone(tmp_path: Path) -> None:
    # A throwaway parent starts the simulator with --parent-pid of itself, then exits.
    code = ("import subprocess, sys; p = subprocess.Popen([sys.executable, '-m', 'simulator', '--workdir', "
            f"{str(tmp_path)!r}, '--parent-pid', str(__import__('os').getpid())], stdout=subprocess.PIPE, text=True);"
            "print(p.pid, flush=True); p.stdout.readline()")
    parent = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    child = int(parent.stdout.split()[0])
    for _ in range(100):  # the watchdog polls once a second
        try:
            import os
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        import os
        os.kill(child, signal.SIGKILL)
        raise AssertionError("simulator outlived its parent")
