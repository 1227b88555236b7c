"""The production install cannot drift: a fresh venv from requirements.txt alone runs the app.

The Flex Consumption remote build installs ``requirements.txt`` and nothing else, so a module the app imports that
arrives here only through a dev dependency would fail the deployment, not CI. This test builds that environment —
a new venv, ``--require-hashes`` (every distribution pinned and hashed, so an unlocked transitive dependency fails
the install), no dev requirements — then, in it: imports ``function_app``, indexes its functions as the Python
worker does (``FunctionApp.get_functions()`` → ``get_function_json()``) and returns every binding, which is checked
here against the settings contract (routes, schedules, queue names, connection settings).

uv installs from its local wheel cache (hard links), so the install takes seconds once the cache is warm; the figures
(install seconds, site-packages MB, import/index milliseconds) are printed for docs/architecture.md (run with -s).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_FILES = ("function_app.py", "host.json", "requirements.txt")
PACKAGE_DIRS = ("functions", "shared_code")

# Runs inside the production venv: no pytest, no test helpers, nothing but the app and its locked dependencies.
PROBE = r"""
import importlib.util, json, sys, time
t0 = time.perf_counter()
import function_app
t1 = time.perf_counter()
functions = []
for fn in function_app.app.get_functions():
    spec = json.loads(fn.get_function_json())
    functions.append({"name": fn.get_function_name(), "bindings": spec["bindings"]})
t2 = time.perf_counter()
dev_only = [m for m in ("pytest", "trustme", "croniter", "hypothesis", "schemathesis", "simulator", "devhost")
            if importlib.util.find_spec(m) is not None]
print(json.dumps({"functions": functions, "import_ms": (t1 - t0) * 1000, "index_ms": (t2 - t1) * 1000,
                  "msgraph_loaded": "msgraph" in sys.modules, "dev_only": dev_only}))
"""


def _settings_literal(name: str) -> Any:
    tree = ast.parse((ROOT / "shared_code" / "settings.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
            assert node.value is not None
            return ast.literal_eval(node.value)
    raise AssertionError(f"shared_code/settings.py has no {name}")


def _uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert found, "uv is missing: it is in requirements-dev.txt (make venv)"
    return found


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Sync .venv-prod to requirements.txt alone and run the probe in it (with the deployed files on sys.path only).

    ``uv pip sync`` makes the venv hold exactly the lock — it installs what is missing and removes anything else —
    so a venv kept from an earlier run is equivalent to a fresh one, without deleting ~38,000 files each time
    (slow on a loaded disk). A clean clone creates it from nothing.
    """
    venv = ROOT / ".venv-prod"
    uv = _uv()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "UV_"))}
    python = venv / "bin" / "python"
    started = time.perf_counter()
    if not python.exists():
        subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, env=env)
    install = subprocess.run(
        [uv, "pip", "sync", "--quiet", "--python", str(python), "--require-hashes", "--no-config",
         str(ROOT / "requirements.txt")],
        capture_output=True, text=True, env=env, check=False,
    )
    install_s = time.perf_counter() - started
    assert install.returncode == 0, f"requirements.txt does not install on its own:\n{install.stderr[-3000:]}"
    frozen = subprocess.run(
        [uv, "pip", "freeze", "--python", str(python)], capture_output=True, text=True, env=env, check=True
    ).stdout
    site = next((venv / "lib").glob("python3*/site-packages"))
    size_mb = sum(f.stat().st_size for f in site.rglob("*") if f.is_file()) / 2**20
    # What azd uploads (.funcignore; tests/infra/test_azd.py proves the list): the app, without tests/simulator.
    package = tmp_path_factory.mktemp("package")
    for name in PACKAGE_FILES:
        shutil.copy2(ROOT / name, package / name)
    for name in PACKAGE_DIRS:
        shutil.copytree(ROOT / name, package / name, ignore=shutil.ignore_patterns("__pycache__"))
    # The Functions host runs the app with its root on sys.path; -I keeps the parent's site and env out.
    probe = subprocess.run(
        [str(python), "-I", "-c", f"import sys; sys.path.insert(0, {str(package)!r})\n{PROBE}"],
        cwd=package, capture_output=True, text=True, env=env, check=False, timeout=120,
    )
    assert probe.returncode == 0, f"function_app fails in the production venv:\n{probe.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(probe.stdout.strip().splitlines()[-1])
    result["installed"] = {
        line.split("==")[0].lower().replace("_", "-"): line.split("==")[1] for line in frozen.split() if "==" in line
    }
    result["package"] = str(package)
    result["install_s"] = install_s
    result["site_packages_mb"] = size_mb
    print(
        f"\nproduction venv: install {install_s:.1f} s, site-packages {size_mb:.0f} MB, "
        f"import function_app {result['import_ms']:.0f} ms, index {result['index_ms']:.0f} ms, "
        f"{len(result['functions'])} functions"
    )
    return result


def test_lock_pins_every_distribution_with_hashes() -> None:
    lines = (ROOT / "requirements.txt").read_text().replace("\\\n", " ").splitlines()
    entries = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    assert entries
    for entry in entries:
        assert re.match(r"^[A-Za-z0-9_.\-]+(\[[a-z,]+\])?==[^\s]+ ", entry), f"not pinned: {entry[:80]}"
        assert "--hash=sha256:" in entry, f"no hash: {entry[:80]}"
    # Everything requirements.in declares is in the lock at the declared version, and the dev lock pins the same
    # production versions (it is compiled with -c requirements.txt).
    def pins(path: Path) -> dict[str, str]:
        found = re.findall(r"^([A-Za-z0-9_.\-]+)(?:\[[a-z,]+\])?==([^\s\\]+)", path.read_text(), flags=re.M)
        return {name.lower().replace("_", "-"): version for name, version in found}

    declared, prod, dev = (pins(ROOT / f) for f in ("requirements.in", "requirements.txt", "requirements-dev.txt"))
    assert {"aiohttp", "azure-identity", "msgraph-sdk", "azure-functions"} <= set(declared)
    assert {k: prod.get(k) for k in declared} == declared, "requirements.txt is stale: run make lock"
    assert {k: dev.get(k) for k in prod} == prod, "requirements-dev.txt pins other production versions: make lock"


def test_production_venv_has_no_dev_packages(production: dict[str, Any]) -> None:
    assert production["dev_only"] == [], "requirements.txt pulls in dev-only packages"
    # Exactly the lock, nothing more (uv pip sync removed anything else).
    lock = dict(re.findall(r"^([A-Za-z0-9_.\-]+)(?:\[[a-z,]+\])?==([^\s\\]+)", (ROOT / "requirements.txt").read_text(),
                           flags=re.M))
    assert production["installed"] == {k.lower().replace("_", "-"): v for k, v in lock.items()}
    # msgraph-sdk is imported lazily by the low-volume calls, never at start-up (cold start of every route).
    assert production["msgraph_loaded"] is False


def test_every_binding_resolves(production: dict[str, Any]) -> None:
    names = set(_settings_literal("SETTING_NAMES"))
    defaults = _settings_literal("SETTING_DEFAULTS")
    functions = production["functions"]
    by_name = {f["name"]: f for f in functions}
    assert len(by_name) == len(functions), "duplicate function names"
    routes: set[tuple[str, str]] = set()
    kinds: dict[str, int] = {}
    for fn in functions:
        triggers = [b for b in fn["bindings"] if b["type"].endswith("Trigger")]
        assert len(triggers) == 1, f"{fn['name']}: {len(triggers)} triggers"
        trigger = triggers[0]
        kinds[trigger["type"]] = kinds.get(trigger["type"], 0) + 1
        if trigger["type"] == "httpTrigger":
            route, methods = trigger["route"], trigger["methods"]
            assert route and not route.startswith("/") and methods, fn["name"]
            for method in methods:
                assert (route, method) not in routes, f"{method} {route} bound twice"
                routes.add((route, method))
            # Authentication is in code (functions/http_support.py), identical under devhost and in Azure.
            assert trigger["authLevel"] == "ANONYMOUS", fn["name"]
        elif trigger["type"] == "timerTrigger":
            match = re.fullmatch(r"%([A-Z_]+)%", trigger["schedule"])
            assert match and match.group(1) in names, f"{fn['name']}: schedule {trigger['schedule']}"
            assert len(defaults[match.group(1)].split()) == 6, "NCRONTAB has six fields"
            assert trigger.get("runOnStartup") is False, fn["name"]
        elif trigger["type"] == "queueTrigger":
            match = re.fullmatch(r"%([A-Z_]+)%", trigger["queueName"])
            assert match and match.group(1) in names, f"{fn['name']}: queue {trigger['queueName']}"
            # The identity-based connection main.bicep sets (AzureWebJobsStorage__*), and the local connection string.
            assert trigger["connection"] == "AzureWebJobsStorage", fn["name"]
        else:
            raise AssertionError(f"{fn['name']}: unexpected trigger {trigger['type']}")
    assert kinds.get("timerTrigger", 0) >= 3 and kinds.get("queueTrigger", 0) >= 1 and kinds["httpTrigger"] >= 10
    assert ("health", "GET") in routes


def test_production_indexes_what_the_dev_env_indexes(production: dict[str, Any]) -> None:
    # The same probe on the same package with the dev interpreter (where every other test runs), in a fresh process
    # (the suite's own function_app is already indexed by devhost): a function that indexes only with dev packages
    # present, or a binding that differs, would be missed by the rest of the suite.
    package = production["package"]
    probe = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {package!r})\n{PROBE}"],
        cwd=package, capture_output=True, text=True, check=False, timeout=120,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    dev = {f["name"]: f["bindings"] for f in json.loads(probe.stdout.strip().splitlines()[-1])["functions"]}
    prod = {f["name"]: f["bindings"] for f in production["functions"]}
    assert prod == dev
