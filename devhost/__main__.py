"""``python -m devhost``: serve a FunctionApp locally (HTTP on :7071/api, timers, queue triggers on Azurite)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from devhost.azurite import AzuriteError
from devhost.config import DevHostError, load_local_settings


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from exc
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {port}")
    return port


def _positive(value: str) -> float:
    try:
        f = float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from exc
    if f <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return f


def build_parser() -> argparse.ArgumentParser:
    """The CLI definition (exposed for tests)."""
    p = argparse.ArgumentParser(
        prog="python -m devhost",
        description="Run an Azure Functions Python v2 app locally: HTTP routes, NCRONTAB timers, queue triggers "
        "on Azurite. Function keys are not enforced (every authLevel behaves as anonymous).",
    )
    p.add_argument("--app", default="function_app:app", help="module:attr of the FunctionApp (default %(default)s)")
    p.add_argument("--port", type=_port, default=7071, help="HTTP port, 0 = any free port (default %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="HTTP listen address (default %(default)s)")
    p.add_argument("--host-json", default=None, help="host.json path (default ./host.json if present)")
    p.add_argument(
        "--settings",
        default=None,
        help="local.settings.json whose Values become environment variables (default ./local.settings.json if "
        "present); variables already set in the environment win",
    )
    p.add_argument(
        "--azurite",
        action="store_true",
        help="start a private Azurite and point AzureWebJobsStorage at it when it is unset or "
        "'UseDevelopmentStorage=true'",
    )
    p.add_argument("--no-timers", action="store_true", help="do not run timers on their schedules")
    p.add_argument(
        "--max-polling-interval",
        type=_positive,
        default=None,
        help="cap (seconds) on the idle queue back-off; default host.json maxPollingInterval",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


async def _serve(args: argparse.Namespace) -> int:
    from devhost.functions import load_app
    from devhost.host import DevHost

    azurite = None
    try:
        settings_path = Path(args.settings) if args.settings else Path("local.settings.json")
        if args.settings and not settings_path.exists():
            raise DevHostError(f"settings file not found: {settings_path}")
        if settings_path.exists():
            for k, v in load_local_settings(settings_path).items():
                os.environ.setdefault(k, v)
        storage = os.environ.get("AzureWebJobsStorage", "")
        if args.azurite and (not storage or storage.strip().lower().startswith("usedevelopmentstorage=true")):
            from devhost.azurite import start_azurite

            azurite = start_azurite()
            os.environ["AzureWebJobsStorage"] = azurite.connection_string
            print(f"devhost: Azurite ready in {azurite.startup_seconds:.2f}s", flush=True)
        # Settings are in the environment before the app is imported: module-level code may read them.
        app = load_app(args.app)
        host = DevHost(
            app,
            port=args.port,
            host=args.host,
            host_json=args.host_json,
            enable_timers=not args.no_timers,
            max_polling_interval=args.max_polling_interval,
        )
        await host.start()
        try:
            print(f"devhost: listening on {host.base_url}", flush=True)
            for line in host.describe():
                print(f"  {line}", flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        finally:
            await host.stop()
        return 0
    finally:
        if azurite is not None:
            azurite.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad arguments or configuration)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The SDKs log every request at INFO; keep them to warnings unless debugging.
    for noisy in ("azure", "msal", "urllib3", "httpx", "httpcore", "aiohttp.access"):
        logging.getLogger(noisy).setLevel("DEBUG" if args.log_level == "DEBUG" else "WARNING")
    try:
        return asyncio.run(_serve(args))
    except DevHostError as exc:
        print(f"devhost: error: {exc}", file=sys.stderr)
        if exc.__cause__ is not None and args.log_level == "DEBUG":
            raise
        return 2
    except AzuriteError as exc:
        print(f"devhost: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        with contextlib.suppress(Exception):
            logging.shutdown()


if __name__ == "__main__":
    sys.exit(main())
