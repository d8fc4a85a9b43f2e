"""The error-code table matches the contract's list: nothing missing, nothing duplicated, statuses as mapped."""

from __future__ import annotations

import re

import pytest

from L07_learning.models.error_codes import ERROR_TABLE, L07Error, L07ErrorCode
from L07_learning.tests.paths import CONTRACT


def _contract_codes() -> dict[str, str]:
    text = CONTRACT.read_text()
    section = text[text.index("## 6. Error codes"): text.index("## 7. API")]
    return dict(re.findall(r"^\| (E7\d{3}) \| ([A-Z0-9_]+) \|", section, flags=re.M))


@pytest.mark.skipif(not CONTRACT.exists(), reason="shared/contract.md is not beside this checkout")
def test_table_matches_contract():
    expected = _contract_codes()
    ours = {c.value: c.name for c in L07ErrorCode}
    assert len(expected) == 106
    assert ours == expected


def test_no_duplicates_and_every_code_has_a_row():
    values = [c.value for c in L07ErrorCode]
    assert len(values) == len(set(values))
    assert set(ERROR_TABLE) == set(L07ErrorCode)
    assert all(re.fullmatch(r"E7\d{3}", v) for v in values)


@pytest.mark.parametrize(
    "code,status", [("E7500", 400), ("E7029", 400), ("E7036", 400), ("E7104", 402), ("E7700", 402), ("E7904", 403),
                    ("E7028", 404), ("E7250", 404), ("E7410", 404), ("E7045", 409), ("E7251", 409), ("E7252", 409),
                    ("E7202", 503), ("E7910", 500)],
)
def test_http_mapping(code, status):
    assert L07Error(code).http_status == status


def test_error_carries_code_message_context():
    err = L07Error(L07ErrorCode.MODEL_NOT_FOUND, model_id="m-1")
    assert err.code is L07ErrorCode.MODEL_NOT_FOUND
    assert err.details == {"model_id": "m-1"} and err.context == err.details
    assert not err.retryable and L07Error("E7030").retryable
    assert err.to_dict()["code"] == "E7250"
    with pytest.raises(ValueError):
        L07Error("E1234")
