"""The dropout-draw study's table is its records': decide.py regenerates experiments/dropout_draw/table.md byte for
byte, and the study's README carries that table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from conftest import REPO_ROOT

STUDY = REPO_ROOT / "experiments" / "dropout_draw"


def test_table_and_readme_are_the_records() -> None:
    spec = importlib.util.spec_from_file_location("decide", STUDY / "decide.py")
    assert spec is not None and spec.loader is not None
    decide = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(decide)
    table = decide.table()
    assert (STUDY / "table.md").read_text() == table
    assert table in (STUDY / "README.md").read_text()
    assert "does not pass" in table  # the outcome the README and docs state
