"""What function_app.py registers (HTTP routes), and sample requests for each documented operation."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
OPENAPI_PATH = ROOT / "openapi.yaml"
_CONSTRAINT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}?=]*)?\??(?:=[^}]*)?\}")
MANAGE_ROLE = "Console.Manage"


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # OpenAPI form, e.g. /tenants/{tenantId}
    function_name: str
    user_function: Any
    anonymous: bool = False


def normalise(template: str) -> str:
    """ASP.NET route template → OpenAPI path: constraints and optional marks dropped, leading slash."""
    return "/" + _CONSTRAINT.sub(lambda m: "{" + m.group(1) + "}", template.strip("/"))


def registered_routes() -> list[Route]:
    """Every (method, path) of every HTTP trigger function_app.app registers."""
    import function_app

    app = function_app.app
    # azure-functions 1.26 remembers names across get_functions() calls (validate_function_names) and raises on a
    # second call; duplicates inside one call are still caught. Reset as devhost/functions.py does.
    if getattr(app, "functions_bindings", None):
        app.functions_bindings = None
    routes: list[Route] = []
    for fn in app.get_functions():
        for binding in fn.get_bindings():
            if binding.type != "httpTrigger":
                continue
            template = binding.route or fn.get_function_name()
            methods = binding.methods or ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
            for method in methods:
                m = getattr(method, "value", method)
                routes.append(Route(str(m).upper(), normalise(template), fn.get_function_name(),
                                    fn.get_user_function()))
    return routes


@cache
def openapi() -> dict[str, Any]:
    return yaml.safe_load(OPENAPI_PATH.read_text())


def documented_operations() -> dict[tuple[str, str], dict[str, Any]]:
    """(METHOD, path) → operation object."""
    ops: dict[tuple[str, str], dict[str, Any]] = {}
    for path, item in openapi()["paths"].items():
        for method, op in item.items():
            if method in ("get", "put", "post", "delete", "patch"):
                ops[(method.upper(), path)] = op
    return ops


def required_role(method: str, path: str) -> str | None:
    """The app role the document says the operation needs (None = anonymous)."""
    op = documented_operations()[(method, path)]
    security = op.get("security", openapi().get("security", []))
    if not security:
        return None
    roles = [role for requirement in security for role in requirement.get("consoleBearer", [])]
    return MANAGE_ROLE if MANAGE_ROLE in roles else (roles[0] if roles else None)


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = openapi()
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def sample_body(method: str, path: str, tenant_id: str | None = None) -> dict[str, Any] | None:
    """A minimal valid JSON body for the operation (None when it takes none)."""
    op = documented_operations()[(method, path)]
    if "requestBody" not in op:
        return None
    schema = resolve(op["requestBody"]["content"]["application/json"]["schema"])
    props = schema.get("properties", {})
    body: dict[str, Any] = {}
    for field in schema.get("required", []):
        spec = resolve(props[field])
        if field == "tenantId":
            body[field] = tenant_id or str(uuid.uuid4())
        elif spec.get("type") == "array":
            body[field] = ["MTD Users"]
        elif "enum" in spec:
            body[field] = spec["enum"][-1]
        elif spec.get("pattern", "").startswith("^[0-9a-fA-F]{8}"):
            body[field] = str(uuid.uuid4())
        else:
            body[field] = "x"
    return body


def fill_path(path: str, **values: str) -> str:
    """Substitute path parameters (random GUIDs unless given)."""
    return re.sub(r"\{([A-Za-z_]+)\}", lambda m: values.get(m.group(1)) or str(uuid.uuid4()), path)
