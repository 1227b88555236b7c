"""`python -m simulator`: start the simulated Microsoft cloud (see docs/simulator.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import tempfile
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m simulator", description="Local Microsoft cloud for tests.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = a free port")
    p.add_argument("--workdir", type=Path, default=None, help="CA, certificates and info file (default: a temp dir)")
    p.add_argument("--info-file", type=Path, default=None, help="default: WORKDIR/simulator.json")
    p.add_argument("--scenario", default=None, help="create tenants of this scenario at start")
    p.add_argument("--tenants", type=int, default=0, help="how many tenants of --scenario (default 1 with --scenario)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        p.error("--port must be 0..65535")
    if args.tenants < 0:
        p.error("--tenants must be >= 0")
    if args.scenario and args.tenants == 0:
        args.tenants = 1
    if args.tenants and not args.scenario:
        p.error("--tenants needs --scenario")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from simulator.server import serve

    workdir: Path = args.workdir or Path(tempfile.mkdtemp(prefix="simulator-"))
    info_file: Path = args.info_file or workdir / "simulator.json"

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await serve(args.host, args.port, workdir, info_file, scenario=args.scenario, tenants=args.tenants,
                    seed=args.seed, parent_pid=args.parent_pid, stop=stop)

    try:
        asyncio.run(run())
    except Exception as exc:  # noqa: BLE001 - guard: startup failure: one clear line, non-zero exit
        print(f"simulator: failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
