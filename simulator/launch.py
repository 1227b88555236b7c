"""Start and stop `python -m simulator` in a subprocess (for tests, devhost and `make run`).

Usage:
    info, proc = start(workdir)             # waits for "SIMULATOR READY", returns the info JSON
    ...
    stop(proc)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


def client_env(info: dict[str, Any], base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a process that talks to the simulator (contract: consumers' settings)."""
    env = dict(os.environ if base is None else base)
    env.update({
        "AZURE_CLOUD": info.get("cloud", "public"),
        "AZURE_AUTHORITY_HOST": info["authority"],
        "GRAPH_BASE_URL": info["graph_base_url"],
        "KEY_VAULT_URL": info["key_vault_url"],
        "INTUNE_RESOURCE": info["intune_resource"],
        "INTUNE_SERVICE_DOMAINS": info["intune_service_domains"],
        "REQUESTS_CA_BUNDLE": info["ca_path"],
        "SSL_CERT_FILE": info["ca_path"],
        "CONNECTOR_CLIENT_ID": info["connector"]["client_id"],
        "CONNECTOR_SECRET_NAME": info["connector"]["secret_name"],
        "CONSOLE_API_AUDIENCE": info["console"]["audience"],
        "CONSOLE_API_TENANT_ID": info["console"]["tenant_id"],
        "CONSOLE_ALLOWED_CLIENT_IDS": info["console"]["client_id"],
    })
    return env


def start(workdir: str | os.PathLike[str], *, scenario: str | None = None, tenants: int = 0, seed: int = 1,
          extra_args: Sequence[str] = (), timeout: float = 120.0, python: str | None = None,
          stderr_path: str | os.PathLike[str] | None = None,
          cloud: str | None = None) -> tuple[dict[str, Any], subprocess.Popen[str]]:
    """Start the simulator and wait until it is ready.

    Args:
        workdir: directory for the CA, certificates, info file and log.
        scenario, tenants, seed: create tenants at start (`--scenario/--tenants/--seed`).
        extra_args: more CLI arguments.
        timeout: seconds to wait for readiness (large scenarios take longer to generate).
        python: interpreter (default: this one).
        stderr_path: where the simulator's stderr goes (default: WORKDIR/simulator.log).
        cloud: the Microsoft cloud to impersonate (SIMULATOR_CLOUD: public, usgov, usgovdod, china; default: the
            caller's SIMULATOR_CLOUD, else public).

    Returns:
        (info, process). The process exits by itself when this process dies (`--parent-pid`).

    Raises:
        RuntimeError: the simulator exited or did not become ready in time (with its log tail).
    """
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    info_file = wd / "simulator.json"
    if info_file.exists():
        info_file.unlink()
    log_path = Path(stderr_path) if stderr_path else wd / "simulator.log"
    cmd = [python or sys.executable, "-m", "simulator", "--port", "0", "--workdir", str(wd),
           "--info-file", str(info_file), "--parent-pid", str(os.getpid())]
    if scenario:
        cmd += ["--scenario", scenario, "--tenants", str(max(tenants, 1)), "--seed", str(seed)]
    cmd += list(extra_args)
    env = dict(os.environ)
    if cloud is not None:
        env["SIMULATOR_CLOUD"] = cloud
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log = open(log_path, "w")  # noqa: SIM115 - handed to the child; closed below
    try:
        proc = subprocess.Popen(cmd, cwd=str(REPO_ROOT), env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    finally:
        log.close()
    ready = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("SIMULATOR READY"):
                ready.set()
        # keep draining until EOF so the child never blocks on a full pipe

    threading.Thread(target=reader, daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready.wait(0.05):
            break
        if proc.poll() is not None:
            raise RuntimeError(f"simulator exited with {proc.returncode}: {_tail(log_path)}")
    else:
        stop(proc)
        raise RuntimeError(f"simulator not ready after {timeout}s: {_tail(log_path)}")
    return json.loads(info_file.read_text()), proc


def stop(proc: subprocess.Popen[str], timeout: float = 10.0) -> int | None:
    """SIGTERM, wait, then SIGKILL if needed. Returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return proc.returncode


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text()[-n:]
    except OSError:
        return "(no log)"
