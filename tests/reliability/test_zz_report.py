"""Last of the suite: docs/reliability.md holds exactly the table this run recorded."""

from __future__ import annotations

import os

import pytest

from tests.reliability import report
from tests.reliability.conftest import recorded_rows, suite_complete


def test_reliability_doc_matches_the_suite() -> None:
    rows = recorded_rows()
    if os.environ.get("OPSPUSH_RELIABILITY_UPDATE") == "1":
        assert suite_complete(), "run the whole tests/reliability suite, all green, to update"
        report.write(rows)
        return
    text = report.DOC.read_text()
    if suite_complete():
        assert report.current_table(text) == report.table(rows), (
            "docs/reliability.md is out of date with the suite: run scripts/reliability-report"
        )
        return
    if not rows:
        pytest.skip("no reliability test ran in this session")
    documented = report.rows_in(text)
    for row in rows:  # a partial run: what ran must still match its documented row
        assert documented.get((row.test, row.name)) == row.render(), (
            f"docs/reliability.md is out of date for {row.test}: run scripts/reliability-report"
        )
