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
