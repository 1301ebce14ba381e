"""The README's table of bad inputs is the one generated from the reliability tests' parameter tables."""

from __future__ import annotations

from pathlib import Path

from benchmark_scripts import load_benchmark

REPO = Path(__file__).resolve().parents[1]


def _script():
    return load_benchmark("guarantees_table")


def test_readme_table_is_generated_from_the_tests():
    script = _script()
    block = script.readme_block((REPO / "README.md").read_text())
    assert block is not None, "README.md lacks the guarantees-table markers"
    assert block == script.render(), (
        "README.md's bad-input table is out of date: run `.venv/bin/python benchmarks/guarantees_table.py --write`"
    )


def test_every_row_names_its_refusal():
    rows = _script().rows()
    assert len(rows) > 100
    assert all(area and what and result for area, what, result in rows)
    assert len({(area, what) for area, what, _ in rows}) == len(rows), "two rows describe the same case"
