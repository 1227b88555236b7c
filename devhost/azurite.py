"""Start and stop a private Azurite (Azure Storage emulator) for tests, devhost and ``make run``.

Azurite listens on ports chosen by the OS (``--blobPort 0`` etc.); the real ports are read back from the
"successfully listening at" lines it prints, so two test sessions never race for a port. Data lives in a temp
folder that is removed on ``stop()``. The node process runs in its own process group and is killed as a group on
``stop()``, at interpreter exit (atexit) and — on Linux, when started from the main thread — when the Python parent
dies (PR_SET_PDEATHSIG), so no node process is ever left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# Azurite's fixed development account (Azure/Azurite README, "Default Storage Account"); public by design.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_AZURITE_BIN = REPO_ROOT / "node_modules" / ".bin" / "azurite"

_LISTENING_RE = re.compile(r"Azurite (Blob|Queue|Table) service is successfully listening at http://[^:]+:(\d+)")


class AzuriteError(RuntimeError):
    """Azurite could not be started or did not become ready."""


@dataclass
class Azurite:
    """Handle on a running Azurite: ports, connection string and ``stop()``."""

    process: subprocess.Popen[bytes]
    location: Path
    host: str
    blob_port: int
    queue_port: int
    table_port: int
    startup_seconds: float
    log_path: Path
    _owns_location: bool = True
    in_memory: bool = False  # --inMemoryPersistence: a restart comes back empty
    _stopped: bool = field(default=False, repr=False)

    @property
    def connection_string(self) -> str:
        """Connection string with explicit endpoints (what ``AzureWebJobsStorage`` holds locally)."""
        base = f"http://{self.host}"
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={base}:{self.blob_port}/{ACCOUNT_NAME};"
            f"QueueEndpoint={base}:{self.queue_port}/{ACCOUNT_NAME};"
            f"TableEndpoint={base}:{self.table_port}/{ACCOUNT_NAME};"
        )

    def stop(self) -> None:
        """Kill the Azurite process group and remove its data folder. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        _kill_group(self.process)
        with contextlib.suppress(ValueError):
            atexit.unregister(self.stop)
        if self._owns_location:
            shutil.rmtree(self.location, ignore_errors=True)

    def restart(self, timeout: float = 60.0) -> None:
        """Stop Azurite and start it again on the same ports with the same data folder (an emulator restart).

        Raises:
            AzuriteError: it did not come back within ``timeout``.
        """
        _kill_group(self.process)
        again = start_azurite(self.location, host=self.host, timeout=timeout,
                              ports=(self.blob_port, self.queue_port, self.table_port), in_memory=self.in_memory)
        with contextlib.suppress(ValueError):
            atexit.unregister(again.stop)
        self.process = again.process
        self.startup_seconds = again.startup_seconds

    def __enter__(self) -> Azurite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, then SIGKILL it if it does not exit promptly."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
    # Children (if any) may outlive the leader; the group id is still the leader's pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def _pdeathsig_preexec() -> None:
    """In the child: ask Linux to SIGKILL us when the parent thread dies (belt and braces with atexit)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except OSError:
        pass


def _read_ports(log_path: Path) -> dict[str, int]:
    try:
        text = log_path.read_text(errors="replace")
    except FileNotFoundError:
        return {}
    return {m.group(1).lower(): int(m.group(2)) for m in _LISTENING_RE.finditer(text)}


def _tcp_ready(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _sdk_ready(connection_string: str) -> None:
    """One real call per service we use: raises until Azurite answers properly."""
    from azure.data.tables import TableServiceClient
    from azure.storage.queue import QueueServiceClient

    with QueueServiceClient.from_connection_string(connection_string) as qs:
        next(iter(qs.list_queues(results_per_page=1).by_page()))
    with TableServiceClient.from_connection_string(connection_string) as ts:
        next(iter(ts.list_tables(results_per_page=1).by_page()))


def start_azurite(
    location: str | os.PathLike[str] | None = None,
    *,
    azurite_bin: str | os.PathLike[str] | None = None,
    host: str = "127.0.0.1",
    timeout: float = 60.0,
    ports: tuple[int, int, int] | None = None,
    in_memory: bool = False,
) -> Azurite:
    """Start Azurite on OS-chosen free ports and wait until it answers real SDK calls.

    Args:
        location: data folder; a fresh temp folder (removed on stop) when omitted.
        azurite_bin: path of the ``azurite`` executable; ``AZURITE_BIN`` env or the repo's node_modules by default.
        host: listen address.
        timeout: seconds to wait for readiness before giving up.
        ports: blob, queue and table ports (default: chosen by the OS); given by :meth:`Azurite.restart`.
        in_memory: ``--inMemoryPersistence``: no data on disk, so no restart keeps it. Azurite otherwise writes its
            whole table database as one JSON file every 5 s while anything changed (LokiJS autosave), which for a
            large data set costs more CPU than the requests themselves (bench/notes/issue9.md, "Fleet profile").

    Returns:
        A started :class:`Azurite` handle (also a context manager).

    Raises:
        AzuriteError: the executable is missing, the process exits, or it is not ready within ``timeout``.
    """
    binary = Path(azurite_bin or os.environ.get("AZURITE_BIN") or DEFAULT_AZURITE_BIN)
    if not binary.exists():
        raise AzuriteError(f"azurite executable not found at {binary} (run `npm ci` in the repo root)")
    if shutil.which("node") is None:
        raise AzuriteError("`node` is not on PATH; Azurite needs Node.js (>= 18)")
    owns = location is None
    loc = Path(tempfile.mkdtemp(prefix="azurite-")) if location is None else Path(location)
    loc.mkdir(parents=True, exist_ok=True)
    log_path = loc / "azurite.out.log"
    blob, queue, table = ports or (0, 0, 0)
    args = [
        str(binary),
        # Azurite refuses --location with --inMemoryPersistence (it then only keeps its log in the cwd, ``loc``).
        *([] if in_memory else ["--location", str(loc)]),
        "--blobHost", host, "--queueHost", host, "--tableHost", host,
        "--blobPort", str(blob), "--queuePort", str(queue), "--tablePort", str(table),
        # --silent drops the access log, not the "listening at" lines we read the ports from.
        "--silent",
        # Newer SDKs send API versions Azurite 3.35 does not know (Azure/Azurite README, "--skipApiVersionCheck").
        "--skipApiVersionCheck",
        # Ignore unsupported headers/parameters instead of failing (README "--loose").
        "--loose",
        "--disableTelemetry",
        *(["--inMemoryPersistence"] if in_memory else []),
    ]  # fmt: skip
    t0 = time.monotonic()
    log_file = open(log_path, "wb")  # noqa: SIM115 - handed to the child, closed below
    try:
        process = subprocess.Popen(
            args,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=loc,
            start_new_session=True,
            preexec_fn=_pdeathsig_preexec
            if sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread()
            else None,
        )
    finally:
        log_file.close()
    handle: Azurite | None = None
    try:
        deadline = t0 + timeout
        ports: dict[str, int] = {}
        while len(ports) < 3:
            if process.poll() is not None:
                raise AzuriteError(
                    f"azurite exited with code {process.returncode}: {log_path.read_text(errors='replace')[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise AzuriteError(f"azurite did not report its ports within {timeout}s (log: {log_path})")
            time.sleep(0.05)
            ports = _read_ports(log_path)
        handle = Azurite(
            process=process,
            location=loc,
            host=host,
            blob_port=ports["blob"],
            queue_port=ports["queue"],
            table_port=ports["table"],
            startup_seconds=0.0,
            log_path=log_path,
            _owns_location=owns,
            in_memory=in_memory,
        )
        atexit.register(handle.stop)
        last_error: Exception | None = None
        while True:
            if process.poll() is not None:
                raise AzuriteError(f"azurite exited with code {process.returncode} (log: {log_path})")
            if all(_tcp_ready(host, p) for p in (handle.blob_port, handle.queue_port, handle.table_port)):
                try:
                    _sdk_ready(handle.connection_string)
                    break
                except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                    last_error = exc
            if time.monotonic() > deadline:
                raise AzuriteError(f"azurite not ready within {timeout}s: {last_error!r} (log: {log_path})")
            time.sleep(0.05)
        handle.startup_seconds = time.monotonic() - t0
        return handle
    except BaseException:
        if handle is not None:
            handle.stop()
        else:
            _kill_group(process)
            if owns:
                shutil.rmtree(loc, ignore_errors=True)
        raise


def main() -> None:
    """``python -m devhost.azurite``: run Azurite until Ctrl-C, printing the connection string."""
    az = start_azurite()
    print(f"AZURITE READY in {az.startup_seconds:.2f}s", flush=True)
    print(f"AzureWebJobsStorage={az.connection_string}", flush=True)
    try:
        while az.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        az.stop()


if __name__ == "__main__":
    main()
