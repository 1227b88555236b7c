"""azure.yaml and infra/main.parameters.json agree with main.bicep, so `azd up` can provision and deploy."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

pytest.importorskip("pycep", reason="infra tests run in .venv-infra: make infra-check (bash infra/check.sh)")
yaml = pytest.importorskip("yaml")

from .conftest import INFRA, ROOT, body  # noqa: E402


def test_azure_yaml_targets_the_flex_function_app(parsed: dict[str, dict[str, Any]]) -> None:
    spec = yaml.safe_load((ROOT / "azure.yaml").read_text())
    assert spec["infra"] == {"provider": "bicep", "path": "infra", "module": "main"}
    services = spec["services"]
    assert len(services) == 1
    name, service = next(iter(services.items()))
    assert service == {"project": ".", "language": "python", "host": "function"}
    # azd finds the app by its azd-service-name tag.
    app_module = parsed["modules/functionapp.bicep"]
    assert app_module["parameters"]["azdServiceName"]["default"] == name
    assert "'azd-service-name': azdServiceName" in (INFRA / "modules" / "functionapp.bicep").read_text()


def test_parameters_file_matches_main(main: dict[str, Any]) -> None:
    params = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    declared = main["parameters"]
    unknown = sorted(set(params) - set(declared))
    assert not unknown, f"main.parameters.json sets parameters main.bicep does not declare: {unknown}"
    without_default = sorted(n for n, p in declared.items() if "default" not in p)
    missing = [n for n in without_default if n not in params]
    assert not missing, f"required parameters azd would have to prompt for: {missing}"
    # No secret is wired from the azd environment (it would sit in .azure/<env>/.env in clear text).
    secure = {n for n, p in declared.items() if any(d["type"] == "secure" for d in p.get("decorators", []))}
    assert not secure & set(params)
    for name, entry in params.items():
        assert re.fullmatch(r"\$\{[A-Z_]+(=[^}]*)?\}", entry["value"]), f"{name}: {entry['value']}"


def test_outputs_azd_needs(main: dict[str, Any]) -> None:
    outputs = main["outputs"]
    for name in ("AZURE_LOCATION", "AZURE_TENANT_ID", "AZURE_RESOURCE_GROUP", "AZURE_FUNCTION_APP_NAME",
                 "AZURE_KEY_VAULT_NAME", "CONNECTOR_SECRET_NAME", "SERVICE_API_URI"):
        assert name in outputs, name
    assert body(main["resources"]["rg"])["name"]["operator"]["type"] == "conditional"


def test_azd_version_that_honours_funcignore() -> None:
    spec = yaml.safe_load((ROOT / "azure.yaml").read_text())
    required = spec["requiredVersions"]["azd"]
    match = re.fullmatch(r">=\s*(\d+)\.(\d+)\.(\d+)", required)
    assert match, required
    # .funcignore for Flex Consumption packages works as documented from azd 1.23.13 (CHANGELOG #7223, #7311).
    assert tuple(int(g) for g in match.groups()) >= (1, 23, 13)


def _funcignore_patterns() -> list[str]:
    lines = (ROOT / ".funcignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    # Only the subset of gitignore syntax this matcher implements (no negation, no anchored or nested paths).
    for pattern in patterns:
        assert not pattern.startswith("!") and "/" not in pattern.rstrip("/"), pattern
    return patterns


def _ignored(path: str, patterns: list[str]) -> bool:
    """gitignore semantics for slash-free patterns: a pattern matches any component; 'x/' only directories."""
    from fnmatch import fnmatchcase

    parts = path.split("/")
    for i, part in enumerate(parts):
        is_dir = i < len(parts) - 1
        for pattern in patterns:
            if pattern.endswith("/") and not is_dir:
                continue
            if fnmatchcase(part, pattern.rstrip("/")):
                return True
    return False


def test_funcignore_packages_only_the_app() -> None:
    import subprocess

    patterns = _funcignore_patterns()
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    packaged = {p for p in tracked if not _ignored(p, patterns)}
    app_roots = ("functions/", "shared_code/")
    assert {"function_app.py", "host.json", "requirements.txt"} <= packaged
    strays = sorted(p for p in packaged if not p.startswith(app_roots) and p not in
                    {"function_app.py", "host.json", "requirements.txt"})
    assert not strays, f"azd would upload: {strays}"
    # What a developer's checkout holds besides the tracked files (azd's own Python defaults no longer apply).
    local_junk = [
        "shared_code/__pycache__/settings.cpython-311.pyc", ".venv/bin/python", ".venv-prod/bin/python",
        ".venv-infra/bin/checkov", "venv/pyvenv.cfg", ".hypothesis/examples/x", ".schemathesis/x",
        ".pytest_cache/v/x", ".mypy_cache/3.11/x", ".ruff_cache/x", "connector.egg-info/PKG-INFO",
        "local.settings.json", ".azure/prod/.env", "requirements-dev.txt", "requirements.in", ".run/azurite/x",
        "node_modules/azurite/package.json", "functions/__pycache__/health.cpython-311.pyc",
    ]
    kept = [p for p in local_junk if not _ignored(p, patterns)]
    assert not kept, f"azd would upload: {kept}"
