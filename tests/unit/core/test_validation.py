"""The text rule every stored string obeys, and the re-check of a stored tenant configuration."""

from __future__ import annotations

import pytest

from shared_code.errors import ValidationError
from shared_code.tenant_config import config_problem
from shared_code.tenants import TenantConfig
from shared_code.validation import Json, text_problem

TID = "11111111-1111-1111-1111-111111111111"


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("a\ud800", "lone surrogate (U+D800) at position 1"),
        ("\udc00b", "lone surrogate (U+DC00) at position 0"),
        ("x\ufdd0", "noncharacter (U+FDD0)"),
        ("x\ufdef", "noncharacter (U+FDEF)"),
        ("x\uffff", "noncharacter (U+FFFF)"),
        ("x\U0001fffe", "noncharacter (U+1FFFE)"),
        ("x\U0010ffff", "noncharacter (U+10FFFF)"),
        ("admin\u202egpj.exe", "bidirectional override or isolate (U+202E)"),
        ("x\u202a", "bidirectional override or isolate (U+202A)"),
        ("x\u2069", "bidirectional override or isolate (U+2069)"),
        ("\x00", "control character (U+0000)"),
        ("a\tb", "control character (U+0009)"),
        ("a\x7f", "control character (U+007F)"),
        ("a\x9f", "control character (U+009F)"),
    ],
)
def test_what_is_not_text(text: str, what: str) -> None:
    problem = text_problem(text)
    assert problem is not None and what in problem, problem


@pytest.mark.parametrize(
    "text",
    ["MTD Users", "מכשירים \u200fניידים", "Ünïcödé", "📱 Mobile", "\U0010fffd", "\ufdcf\ufdf0", "a\u00a0b", "",
     "\u200e"],
)
def test_what_is_text(text: str) -> None:
    assert text_problem(text) is None


def test_free_form_json_is_checked_to_the_last_key() -> None:
    spec = Json(max_chars=100, types=(dict, str))
    assert spec.check({"a": [{"b": "ok"}]}, "threats[0]") == {"a": [{"b": "ok"}]}
    with pytest.raises(ValidationError) as info:
        spec.check({"a": [{"b": "bad\u0085"}]}, "threats[0]")
    assert info.value.field == "threats[0].a[0].b"
    with pytest.raises(ValidationError) as info:
        spec.check({"k\ud800": 1}, "threats[0]")
    assert info.value.field == "threats[0].k\\ud800"
    with pytest.raises(ValidationError):
        spec.check(True, "threats[0]")
    with pytest.raises(ValidationError):
        spec.check("x" * 101, "threats[0]")


def test_a_stored_config_is_judged_on_what_the_poll_reads() -> None:
    assert config_problem(TenantConfig(tenant_id=TID, enrollment_groups=("A", "B"))) is None
    bad = config_problem(TenantConfig(tenant_id=TID, enrollment_groups=("A", "B\ud800")))
    assert bad is not None and bad.field == "enrollmentGroups[1]"
    assert config_problem(TenantConfig(tenant_id=TID, enrollment_groups=("A",), platforms=("iOS", "Symbian")))
    # A role name with a trailing newline (the old ``^…$`` pattern let it in) is the console's business, not the
    # poll's: enrollment keeps running.
    assert config_problem(TenantConfig(tenant_id=TID, enrollment_groups=("A",),
                                       role_mappings=((TID, "Console.Read\n"),))) is None
