"""Fixtures for the infra tests: every Bicep file parsed once with pycep-parser.

These tests run in .venv-infra (``make infra-check`` / ``bash infra/check.sh``); in the app's .venv, where
pycep-parser is not installed, each module skips itself with that hint.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"


def module_literal(path: Path, name: str) -> Any:
    """A module-level literal of a Python file, read with ``ast`` (the app and its SDKs are never imported here)."""
    tree = ast.parse(path.read_text())
    for node in tree.body:
        target = None
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            target, value = node.target.id, node.value
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target, value = node.targets[0].id, node.value
        if target == name and value is not None:
            return ast.literal_eval(value)
    raise AssertionError(f"{path} has no module-level literal {name}")


def unwrap(conf: dict[str, Any]) -> dict[str, Any]:
    """Strip pycep's ``{"condition"|"loop_type": …, "config": {…}}`` wrappers from a resource/module body."""
    while isinstance(conf.get("config"), dict) and ("condition" in conf or "loop_type" in conf):
        conf = conf["config"]
    return conf


def body(resource: dict[str, Any]) -> dict[str, Any]:
    """The body (name, properties, …) of a parsed resource or module."""
    return unwrap(resource["config"])


def accessor(expr: Any) -> list[str]:
    """Flatten a pycep property/index accessor into its parts: ``storage.outputs.name`` -> [storage, outputs, name]."""
    if isinstance(expr, str):
        return [expr]
    if isinstance(expr, dict) and "operator" in expr:
        op = expr["operator"]
        if op["type"] in ("property_accessor", "index_accessor"):
            return accessor(op["operands"]["operand_1"]) + accessor(op["operands"]["operand_2"])
    return [repr(expr)]


@pytest.fixture(scope="session")
def parsed() -> dict[str, dict[str, Any]]:
    """Every .bicep under infra/, keyed by its path relative to infra/ (``main.bicep``, ``modules/storage.bicep``)."""
    from pycep import BicepParser

    files = sorted(INFRA.rglob("*.bicep"))
    return {path.relative_to(INFRA).as_posix(): BicepParser().parse(file_path=path) for path in files}


@pytest.fixture(scope="session")
def main(parsed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The parsed main.bicep."""
    return parsed["main.bicep"]


@pytest.fixture(scope="session")
def app_settings(main: dict[str, Any]) -> dict[str, Any]:
    """main.bicep's literal app settings object (the first argument of ``union(…, extraAppSettings)``)."""
    value = main["variables"]["appSettings"]["value"]
    func = value["function"]
    assert func["type"] == "union", "appSettings should be union({...}, extraAppSettings)"
    settings = func["parameters"]["arg_1"]
    assert isinstance(settings, dict)
    return settings


def resources_of_type(parsed: dict[str, dict[str, Any]], rtype: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(file, symbolic name, parsed resource) for every resource of ``rtype`` the files deploy (not ``existing``)."""
    return [
        (file, name, res)
        for file, tree in parsed.items()
        for name, res in tree.get("resources", {}).items()
        if res["type"].lower() == rtype.lower() and not res.get("existing")
    ]
