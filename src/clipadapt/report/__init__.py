"""The papers' tables from a folder of finished runs: mean ± std over seeds, HM as the papers compute it.

Every run folder holds `metrics.json` (finished), `failed.json` (recorded by `clipadapt sweep`) or
neither (not run yet, or interrupted). A sweep writes `sweep-<name>.json` at its root listing every run it
expects; without it, a run group's expected seeds are all the seeds seen under its protocol. Missing
and failed runs are listed in the report, never averaged over.

How the numbers are combined (CoOp's, MaPLe's and MMA's `parse_test_res.py` and tables):
- per dataset: mean and sample standard deviation (n - 1) over the seeds present; HM is the harmonic
  mean of the seed-averaged base and novel accuracies (not the mean of per-seed HMs);
- the Average row: the mean over datasets of those seed means, and its HM from the averaged base and
  novel; its std is over the per-seed averages of the seeds present for every dataset.

One job a module: `collect` (the run folders read), `tables` (aggregation over seeds, rows, costs),
`rendering` and `renderers` (one renderer per protocol, each giving markdown, CSV rows and JSON
together), `plots`, and `writer` (the files). Nothing here imports torch.
"""

from .collect import RunSet, find_runs, run_settings
from .plots import write_plots
from .renderers import (
    render_absent_runs,
    render_base2novel,
    render_cost,
    render_fewshot,
    render_study,
    render_transfer,
)
from .rendering import Section, cost_cells, markdown_table, scored_text, varying_settings
from .tables import (
    COST_COLUMNS,
    Stat,
    base2novel_table,
    cost_of,
    fewshot_table,
    split_by_settings,
    study_curves,
    study_tables,
    table_rows,
    transfer_table,
)
from .writer import base2novel_summary, render, write_report

__all__ = [
    "COST_COLUMNS",
    "RunSet",
    "Section",
    "Stat",
    "base2novel_summary",
    "base2novel_table",
    "cost_cells",
    "cost_of",
    "fewshot_table",
    "find_runs",
    "markdown_table",
    "render",
    "render_absent_runs",
    "render_base2novel",
    "render_cost",
    "render_fewshot",
    "render_study",
    "render_transfer",
    "run_settings",
    "scored_text",
    "split_by_settings",
    "study_curves",
    "study_tables",
    "table_rows",
    "transfer_table",
    "varying_settings",
    "write_plots",
    "write_report",
]
