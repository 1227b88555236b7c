"""One GUID rule for every id the API and the stores take."""

from __future__ import annotations

import pytest

from shared_code.domain.ids import is_guid

GOOD = "0f8fad5b-d9cb-469f-a165-70867728950e"


@pytest.mark.parametrize("value", [GOOD, GOOD.upper()])
def test_canonical_guids_in_either_case_are_ids(value: str) -> None:
    assert is_guid(value)


@pytest.mark.parametrize(
    "value",
    [
        GOOD + "\n",  # `$` in a regex matches before a trailing newline; fullmatch does not
        "\n" + GOOD,
        "{" + GOOD + "}",
        "urn:uuid:" + GOOD,
        GOOD.replace("-", ""),
        GOOD[:-1],
        GOOD + "0",
        "",
        None,
        42,
    ],
)
def test_anything_else_is_not(value: object) -> None:
    assert not is_guid(value)
