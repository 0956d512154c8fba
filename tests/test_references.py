"""The published numbers: every row names its source, and its HM is the harmonic mean of its base and
novel (to the source's rounding), which catches a mistyped digit."""

import pytest

from clipadapt.references import REFERENCES


@pytest.mark.parametrize("name,row", REFERENCES[("base2novel", "Average")].items())
def test_each_published_row_has_a_source_and_a_consistent_hm(name, row):
    assert row["source"] and "hm" in row
    if "base" in row:
        hm = 2 * row["base"] * row["novel"] / (row["base"] + row["novel"])
        assert row["hm"] == pytest.approx(hm, abs=0.06), name  # the KgCoOp README rounds to one decimal


def test_the_comparison_columns_are_there():
    assert {"CoCoOp", "KgCoOp", "PromptSRC", "MaPLe", "MMRL", "MMA++"} <= set(REFERENCES[("base2novel", "Average")])
