"""Every setting the connector reads is either set by main.bicep or has a documented default in shared_code/settings.py.

The names come from ``SETTING_NAMES`` / ``SETTING_DEFAULTS`` in shared_code/settings.py, read with ``ast`` so the app
(and its SDKs, which .venv-infra does not have) is never imported.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pycep", reason="infra tests run in .venv-infra: make infra-check (bash infra/check.sh)")

from .conftest import ROOT, module_literal

SETTINGS_PY = ROOT / "shared_code" / "settings.py"
# Settings satisfied in Azure by another form: the identity-based storage connection replaces the connection
# string, and the Key Vault reference replaces the local-only client secret.
ALTERNATIVES = {
    "AzureWebJobsStorage": "AzureWebJobsStorage__accountName",
    "CONNECTOR_CLIENT_SECRET": "KEY_VAULT_URL",
}
# Must never be an app setting in Azure (the secret lives in Key Vault).
LOCAL_ONLY = {"CONNECTOR_CLIENT_SECRET"}
# Bound as %NAME% in trigger decorators or read by the host: the Python default cannot help, the host needs them.
HOST_RESOLVED = {"POLL_SCHEDULE", "HEARTBEAT_SCHEDULE", "UPLOAD_RESULTS_SCHEDULE", "POLL_QUEUE_NAME"}


@pytest.fixture(scope="module")
def setting_names() -> tuple[str, ...]:
    names = module_literal(SETTINGS_PY, "SETTING_NAMES")
    assert isinstance(names, tuple) and names, "SETTING_NAMES must be a non-empty tuple literal"
    return names


@pytest.fixture(scope="module")
def setting_defaults() -> dict[str, str]:
    defaults = module_literal(SETTINGS_PY, "SETTING_DEFAULTS")
    assert isinstance(defaults, dict)
    return defaults


def test_every_setting_is_set_or_defaulted(
    setting_names: tuple[str, ...], setting_defaults: dict[str, str], app_settings: dict[str, Any]
) -> None:
    uncovered = [
        name
        for name in setting_names
        if name not in app_settings
        and name not in setting_defaults
        and ALTERNATIVES.get(name) not in app_settings
    ]
    assert not uncovered, f"read by shared_code/settings.py but neither set in main.bicep nor defaulted: {uncovered}"


def test_required_settings_are_set_in_bicep(
    setting_names: tuple[str, ...], setting_defaults: dict[str, str], app_settings: dict[str, Any]
) -> None:
    required = [n for n in setting_names if n not in setting_defaults and n not in ALTERNATIVES]
    assert required, "expected some settings without a default (client id, console audience, ...)"
    missing = [n for n in required if n not in app_settings]
    assert not missing, f"required settings missing from main.bicep: {missing}"


def test_host_resolved_settings_are_app_settings(app_settings: dict[str, Any]) -> None:
    missing = sorted(HOST_RESOLVED - set(app_settings))
    assert not missing, f"the Functions host resolves these from app settings: {missing}"


def test_local_only_settings_are_not_deployed(app_settings: dict[str, Any]) -> None:
    assert not LOCAL_ONLY & set(app_settings)


def test_bicep_defaults_match_settings_defaults(
    main: dict[str, Any], setting_defaults: dict[str, str], app_settings: dict[str, Any]
) -> None:
    # Where main.bicep sets a setting from a parameter, that parameter's default must equal the app's default,
    # so a deployment with no overrides behaves like the documented defaults.
    params = main["parameters"]
    compared = 0
    for name, value in app_settings.items():
        if name not in setting_defaults:
            continue
        param = None
        if isinstance(value, str) and value in params:
            param = value
        elif isinstance(value, dict) and value.get("function", {}).get("type") == "string":
            inner = value["function"]["parameters"]["value_to_convert"]
            param = inner if isinstance(inner, str) and inner in params else None
        if param is None:
            continue
        default = params[param].get("default")
        if default == "" or isinstance(default, dict):
            # Empty or an ARM expression (environment()): the app's default for AZURE_CLOUD applies (cloud.py).
            continue
        assert str(default) == setting_defaults[name], (
            f"{name}: main.bicep param {param} defaults to {default!r}, shared_code/settings.py to "
            f"{setting_defaults[name]!r}"
        )
        compared += 1
    assert compared >= 10, f"only {compared} settings compared; did main.bicep stop using parameters?"


def _python_sources() -> list[Path]:
    files = [ROOT / "function_app.py"] if (ROOT / "function_app.py").exists() else []
    return files + sorted((ROOT / "functions").rglob("*.py"))


def test_binding_expressions_resolve_to_app_settings(app_settings: dict[str, Any]) -> None:
    # `schedule="%POLL_SCHEDULE%"`, `queue_name="%POLL_QUEUE_NAME%"` and `connection="X"` are resolved by the
    # Functions host from app settings at startup: a missing one stops the function from being indexed.
    referenced: set[str] = set()
    connections: set[str] = set()
    for path in _python_sources():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                referenced |= set(re.findall(r"%([A-Za-z_][A-Za-z0-9_]*)%", node.value))
            if isinstance(node, ast.keyword) and node.arg == "connection" and isinstance(node.value, ast.Constant):
                connections.add(str(node.value.value))
    missing = sorted(n for n in referenced if n not in app_settings)
    assert not missing, f"binding expressions without an app setting in main.bicep: {missing}"
    for conn in connections:
        assert conn in app_settings or f"{conn}__accountName" in app_settings or f"{conn}__queueServiceUri" in (
            app_settings
        ), f"connection {conn!r} has no app setting"
