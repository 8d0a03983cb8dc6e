"""The configs resolve to the recorded values (tests/resolved_configs.json; see tests/resolved_configs.py)."""

from __future__ import annotations

import json

import pytest
from resolved_configs import RECORD, choices, resolved

RECORDED = json.loads(RECORD.read_text())


@pytest.mark.parametrize("overrides", choices(), ids=lambda o: " ".join(o) or "(defaults)")
def test_resolved_config_is_the_recorded_one(overrides: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QIN_MOVIELENS_SRC", raising=False)
    assert resolved(overrides) == RECORDED[" ".join(overrides) or "(defaults)"]


def test_every_composed_choice_is_recorded() -> None:
    assert sorted(" ".join(o) or "(defaults)" for o in choices()) == sorted(RECORDED)
