"""Every shipped suite expands to exactly the teacher jobs and runs (by id) it did before the renovation.

The ids in ``tests/golden/run_ids.json`` were computed by the pre-renovation code (suite.py as one module, specs
as dicts). A structural change that alters any resolved spec, or how a spec is hashed, changes an id and fails
here: results on disk would silently stop being found (re-run instead of skipped).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdbench.suite import expand, list_suites, load_suite

GOLDEN = json.loads((Path(__file__).parent / "golden" / "run_ids.json").read_text())


def test_the_golden_file_covers_every_shipped_suite() -> None:
    assert sorted(GOLDEN) == sorted(list_suites())


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_run_ids_are_unchanged(name: str) -> None:
    plan = expand(load_suite(name, check_files=False))
    assert sorted(plan.teachers) == GOLDEN[name]["teachers"]
    assert sorted(plan.runs) == GOLDEN[name]["runs"]
