"""docs/operations.md shows the shipped alerts' KQL exactly as infra/modules/alerts.bicep builds it."""

from __future__ import annotations

import re

from .conftest import ROOT

ALERTS = ROOT / "infra" / "modules" / "alerts.bicep"
OPERATIONS = ROOT / "docs" / "operations.md"
POISON_QUEUE = "tenant-polls-poison"  # main.bicep: '${pollQueueName}-poison' with the default queue name


def _alert_queries() -> dict[str, str]:
    """Rule name → query, with the module's variables and the poison queue name substituted."""
    text = ALERTS.read_text()
    variables = {"poisonQueueName": POISON_QUEUE}
    for name, value in re.findall(r"^var (\w+) = '((?:[^'\\]|\\.)*)'$", text, flags=re.MULTILINE):
        variables[name] = value.replace("\\'", "'")

    def expand(value: str) -> str:
        for _ in range(3):  # variables may refer to variables
            value = re.sub(r"\$\{(\w+)\}", lambda m: variables[m.group(1)], value)
        return value

    variables = {k: expand(v) for k, v in variables.items()}
    rules = re.findall(r"name: '([\w-]+)'\n(?:.*\n){0,4}?\s+query: '((?:[^'\\]|\\.)*)'", text)
    return {name: expand(query.replace("\\'", "'")) for name, query in rules}


def test_every_shipped_alert_query_is_in_the_operations_doc() -> None:
    queries = _alert_queries()
    assert set(queries) == {"poison-queue", "heartbeat-failed", "tenant-quarantined"}
    doc = OPERATIONS.read_text()
    for name, query in queries.items():
        assert f"**{name}**" in doc, name
        assert query in doc, f"docs/operations.md lacks the KQL of {name}: {query}"


def test_the_doc_names_every_metric_the_code_creates() -> None:
    code = (ROOT / "shared_code" / "telemetry.py").read_text()
    metrics = set(re.findall(r'create_(?:counter|histogram|gauge)\(\s*"([\w.]+)"', code))
    assert "connector.queue.poison_length" in metrics and len(metrics) >= 10
    doc = OPERATIONS.read_text()
    missing = sorted(m for m in metrics if f"`{m}`" not in doc and m not in doc)
    assert not missing, missing
