"""Fleet polling through the function app's own path, scaled over queue workers (devhost processes).

``python -m bench.fleet`` is one *node*: a fresh process running devhost with ``function_app.py`` (queue pollers on,
timers fired on command), all nodes sharing one Azurite queue and one set of tables — like Functions instances
sharing a storage account. The first stdin line is the job (JSON, with the simulator's secret: kept off the command
line); each further line is a command, answered with one ``OK {json}`` line:

* ``advance S`` — move the node's clock (the container's) S seconds on: every node moves together, so the next
  ``dispatch`` finds the tenants due again, as the 5-minute schedule would;
* ``dispatch`` — fire ``dispatch_polls`` (one node: the host's timer is a singleton);
* ``drain`` — wait until the queue is empty and this node runs nothing; answers with its invocation count, so the
  parent repeats the round until no node did anything new (a continuation another node enqueued is not missed);
* ``stats`` — invocations, failures, the pacer's counts, RSS, the app's storage calls (bench/storage_meter.py);
* ``profile on`` / ``profile dump FILE`` — cProfile this node's work between the two (a dispatch and its drain);
* ``quit``.

Each node's pacer takes ``1 / nodes`` of the app budget (``GRAPH_PACER_INSTANCES``). With ``throttle_scale`` the
simulator's Graph quotas and the pacer's budgets are scaled alike, so the app budget binds at a rate this box can
reach; ``pacing: false`` is the control run (``GRAPH_PACER_INSTANCES=0``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


async def node(job: dict[str, Any]) -> None:
    """Serve commands on stdin until ``quit`` (see the module docstring)."""
    import cProfile

    from bench.stack import BenchClock, stack_env
    from bench.storage_meter import StorageMeter, metered_storage
    from bench.worker import peak_rss_bytes, rss_bytes
    from devhost import DevHost, load_app
    from shared_code.bootstrap import Container, use_container
    from shared_code.settings import Settings

    env = stack_env(job)
    os.environ.update(env)
    clock = BenchClock()
    clock.offset = float(job.get("clock_offset") or 0)
    container = Container(Settings.from_env(env), clock=clock)
    meter = StorageMeter(env["TABLE_PREFIX"])
    # The app's own table and queue clients, with azure-core's per-request hooks counting what each call is.
    container._storage = metered_storage(env["AzureWebJobsStorage"], env["TABLE_PREFIX"], meter)
    use_container(container)
    profiler: cProfile.Profile | None = None
    logging.getLogger("devhost").setLevel(logging.WARNING)
    host = DevHost(load_app("function_app:app"), env, port=0, host_json=ROOT / "host.json", enable_timers=False,
                   max_polling_interval=0.5)
    await host.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def answer(data: dict[str, Any]) -> None:
        sys.stdout.write("OK " + json.dumps(data) + "\n")
        sys.stdout.flush()

    answer({"base_url": host.base_url, "rss_mb": round(rss_bytes() / 2**20, 1)})
    try:
        while True:
            line = (await reader.readline()).decode().strip()
            if not line or line == "quit":
                break
            cmd, _, arg = line.partition(" ")
            if cmd == "advance":
                clock.offset += float(arg)
                answer({"offset": clock.offset})
            elif cmd == "dispatch":
                await host.run_timer("dispatch_polls")
                answer({})
            elif cmd == "drain":
                try:
                    await host.drain_queues(timeout=float(arg or 1800))
                    answer({"drained": True, "invocations": host.stats["poll_tenant"].invocations})
                except TimeoutError:
                    answer({"drained": False, "invocations": host.stats["poll_tenant"].invocations})
            elif cmd == "profile":
                what, _, path = arg.partition(" ")
                if what == "on":
                    profiler = cProfile.Profile()
                    profiler.enable()
                elif profiler is not None:
                    profiler.disable()
                    profiler.dump_stats(path)
                    profiler = None
                answer({})
            elif cmd == "stats":
                pacer = container.graph_pacer
                s = host.stats["poll_tenant"]
                answer({"invocations": s.invocations, "failures": s.failures, "poisoned": s.poisoned,
                        "storage": meter.snapshot(),
                        "rss_mb": round(rss_bytes() / 2**20, 1), "peak_rss_mb": round(peak_rss_bytes() / 2**20, 1),
                        "pacer": None if pacer is None else {
                            "requests": pacer.stats.requests, "ru": pacer.stats.resource_units,
                            "waited": pacer.stats.waited, "wait_s": round(pacer.stats.wait_seconds, 2),
                            "longest_wait_s": round(pacer.stats.longest_wait_seconds, 3)}})
    finally:
        await host.stop()
        await container.close()
        use_container(None)


class Node:
    """The parent's handle on one node process."""

    def __init__(self, job: dict[str, Any]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["SSL_CERT_FILE"] = env["REQUESTS_CA_BUNDLE"] = job["info"]["ca_path"]
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.fleet"], cwd=str(ROOT), env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.ready = self._send(json.dumps(job))

    def _send(self, line: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        while True:
            out = self.proc.stdout.readline()
            if not out:
                raise RuntimeError(f"fleet node exited ({self.proc.poll()})")
            if out.startswith("OK "):
                data: dict[str, Any] = json.loads(out[3:])
                return data

    def command(self, line: str) -> dict[str, Any]:
        """Send one command and wait for its answer."""
        return self._send(line)

    def stop(self) -> None:
        """Ask the node to quit, then make sure it has."""
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired, AssertionError):
            self.proc.kill()
            self.proc.wait()


def drain_all(nodes: list[Node], limit_s: float) -> bool:
    """Drain rounds until every node is idle with an empty queue and no node ran anything new in the round."""
    from concurrent.futures import ThreadPoolExecutor

    before = -1
    deadline = time.monotonic() + limit_s
    with ThreadPoolExecutor(len(nodes)) as pool:
        while time.monotonic() < deadline:
            left = max(1.0, deadline - time.monotonic())
            answers = list(pool.map(lambda n, left=left: n.command(f"drain {left:.0f}"), nodes))
            if not all(a["drained"] for a in answers):
                return False
            total = sum(a["invocations"] for a in answers)
            if total == before:
                return True
            before = total
    return False


def main() -> int:
    """Node entry point: the job is the first stdin line."""
    job = json.loads(sys.stdin.readline())
    asyncio.run(node(job))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
