"""Every section of the tenant status document is typed and has exactly one writer module.

Reads the source (ast): each ``update_status(tenant, SECTION, …)`` / ``increment(tenant, SECTION, …)`` call names
its section with a module constant; the constant is resolved by importing the module. A second module writing a
section, a section written with a literal or an expression, or a section without a type fails here.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import get_type_hints

from shared_code.tenant_status import TenantStatus

REPO = Path(__file__).resolve().parents[3]
WRITE_METHODS = {"update_status", "increment"}
EXPECTED_WRITERS = {
    "poll": "shared_code/enrollment/status.py", "counts": "shared_code/enrollment/status.py",
    "scope": "shared_code/enrollment/status.py", "guard": "shared_code/enrollment/status.py",
    "pending": "shared_code/enrollment/status.py", "quarantine": "shared_code/enrollment/status.py",
    "config": "shared_code/enrollment/status.py",
    "delivery": "shared_code/enrollment/poison.py",
    "intune": "shared_code/intune/status.py", "heartbeat": "shared_code/intune/status.py",
    "permissions": "shared_code/intune/status.py", "intune_activity": "shared_code/intune/status.py",
    "credential": "shared_code/adapters/tenant_store.py",  # the connector-level document (ConnectorStatus's store)
}


def _writes() -> dict[str, set[str]]:
    """Section name → the files that write it."""
    found: dict[str, set[str]] = {}
    for folder in ("shared_code", "functions"):
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            tree = ast.parse(path.read_text(encoding="utf-8"))
            module = None
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in WRITE_METHODS and len(node.args) >= 2):
                    continue
                if rel.startswith("shared_code/adapters/") and node.func.attr != "update_status":
                    continue
                if rel in ("shared_code/adapters/tenant_store.py", "shared_code/adapters/memory_tenant_store.py") \
                        and isinstance(node.args[1], ast.Name) and node.args[1].id == "section":
                    continue  # the repository's own implementation (update_status → _modify_status)
                section = node.args[1]
                assert isinstance(section, ast.Name), f"{rel}:{node.lineno}: name the section with a constant"
                module = module or importlib.import_module(rel[:-3].replace("/", "."))
                found.setdefault(str(getattr(module, section.id)), set()).add(rel)
    return found


def test_each_section_has_one_writer_module() -> None:
    writes = _writes()
    assert {section: sorted(files) for section, files in writes.items()} == {
        section: [writer] for section, writer in EXPECTED_WRITERS.items()
    }


def test_every_section_of_the_document_is_typed() -> None:
    hints = get_type_hints(TenantStatus)
    assert set(hints) == set(EXPECTED_WRITERS) - {"credential"}
    for section, hint in hints.items():
        assert hint is not dict, section
