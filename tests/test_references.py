"""The published numbers: every row names its source, its HM is the harmonic mean of its base and novel
and a method's 11 per-dataset rows average to its Average row (to the source's rounding), which catches a
mistyped digit."""

from statistics import mean

import pytest

from clipadapt.data.coop import COOP_DATASETS
from clipadapt.references import REFERENCES

ELEVEN_DATASETS = [name for name, d in COOP_DATASETS.items() if not d.test_only]
# Two-decimal sources: the HM of rounded base and novel, and the mean of 11 rounded rows, are off by at
# most 0.01 (the float epsilon only keeps 0.01 itself in).
ROUNDING = 0.01 + 1e-9
# (protocol, table, method): why that source's printed HM is further than ROUNDING from 2bn/(b+n).
HM_EXCEPTIONS: dict[tuple[str, str, str], str] = {}
# (protocol, method, "base" | "novel"): why that source's Average is further than ROUNDING from the mean
# of its 11 per-dataset rows.
AVERAGE_EXCEPTIONS: dict[tuple[str, str, str], str] = {}


def _rows() -> list[tuple[str, str, str, dict]]:
    return [
        (protocol, table, name, row)
        for (protocol, table), rows in REFERENCES.items()
        for name, row in rows.items()
    ]


def average_mismatches(references: dict) -> list[str]:
    """For each method with a row on all 11 datasets: the columns whose mean misses its Average row."""
    found = []
    for protocol in sorted({p for p, _ in references}):
        average = references.get((protocol, "Average"), {})
        for method, avg in average.items():
            rows = [references.get((protocol, d), {}).get(method) for d in ELEVEN_DATASETS]
            if not all(rows):
                continue
            for column in ("base", "novel"):
                if column not in avg or (protocol, method, column) in AVERAGE_EXCEPTIONS:
                    continue
                over = mean(r[column] for r in rows)
                if abs(over - avg[column]) > ROUNDING:
                    found.append(
                        f"{protocol} {method} {column}: mean of the 11 rows {over:.3f}, Average {avg[column]}"
                    )
    return found


def test_there_are_eleven_benchmark_datasets():
    assert ELEVEN_DATASETS == [
        "imagenet",
        "caltech101",
        "oxford_pets",
        "stanford_cars",
        "oxford_flowers",
        "food101",
        "fgvc_aircraft",
        "sun397",
        "dtd",
        "eurosat",
        "ucf101",
    ]


@pytest.mark.parametrize(
    "protocol,table,name,row", _rows(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_each_published_row_has_a_source_and_a_consistent_hm(protocol, table, name, row):
    assert row["source"] and "hm" in row
    if "base" in row and (protocol, table, name) not in HM_EXCEPTIONS:
        hm = 2 * row["base"] * row["novel"] / (row["base"] + row["novel"])
        assert row["hm"] == pytest.approx(hm, abs=ROUNDING), (table, name)


def test_tables_are_the_average_or_a_dataset_the_report_names():
    # A key spelled as the paper spells it ("OxfordPets") would never match a table of the report.
    assert {table for _, table in REFERENCES} <= {"Average", *ELEVEN_DATASETS}


def test_per_dataset_rows_average_to_the_published_average():
    assert average_mismatches(REFERENCES) == []


def test_the_average_check_catches_a_mistyped_digit():
    rows = {("base2novel", d): {"M": {"base": 80.0, "novel": 70.0}} for d in ELEVEN_DATASETS}
    rows[("base2novel", "Average")] = {"M": {"base": 80.0, "novel": 70.0}}
    assert average_mismatches(rows) == []
    rows[("base2novel", "dtd")]["M"]["novel"] = 79.0  # 70.0 typed as 79.0 moves the mean by 0.82
    assert average_mismatches(rows) == [
        "base2novel M novel: mean of the 11 rows 70.818, Average 70.0"
    ]
    del rows[("base2novel", "eurosat")]  # a method short of a dataset is not averaged
    assert average_mismatches(rows) == []


def test_the_comparison_columns_are_there():
    assert {"CoCoOp", "KgCoOp", "PromptSRC", "MaPLe", "MMRL", "MMA++"} <= set(
        REFERENCES[("base2novel", "Average")]
    )
