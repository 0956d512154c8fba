"""Grids of runs: methods × datasets × seeds × shots under one protocol, one folder per run.

A sweep file (YAML) names the grid; every run is one call of the run API (`clipadapt.run.train`, the
function behind `clipadapt train`) with those settings, in OUT/<protocol>/<method>/<dataset>/shots<K>/seed<S>/. A finished run (metrics.json) is skipped when its
config.yaml records the settings it would get now; one recorded with other settings stops the sweep
before anything is written, unless `rerun_changed` (`--rerun-changed`) reruns it; the results it
reruns over wait in the run's .replaced/ until the rerun finishes (a failed rerun loses nothing). An
interrupted one resumes from its checkpoint, a failing one is recorded in its folder (failed.json,
with the error) and the others go on. OUT/sweep-<file name>.json lists every run the sweep expects, so that
`clipadapt report OUT` can name the ones that are missing. Cross-dataset and domain
generalization share their source adapters: a sweep with `adapters_from: cross_dataset` evaluates
the adapters the cross-dataset sweep trained in the same OUT (`clipadapt.run.transfer`), training nothing.

The paper and study sweeps ship inside the package (clipadapt/sweeps/, `clipadapt sweep --list`), so
`clipadapt sweep base2novel` works from a wheel install; a checkout's configs/sweeps/ points there.

A study (configs/sweeps/studies/) lists `variants` instead of `methods`: each is a method and the
settings that make one row of the paper's table; its runs go to
OUT/<protocol>/<study>/<variant>/<dataset>/shots<K>/seed<S>/ and the manifest carries the study's
variants, reference, plotted settings and paper numbers for `clipadapt report`.

One job a module: `sweep_file` (the file format and its checks), `planning` (the runs, the run-API
call each is, skip / rerun / start), `execution` (one run, in this process or a child), `launchers`
(local, `--jobs N` children, submitit / SLURM, and the dry run). These modules import no torch; it is
loaded when a run trains, and when a sweep file's settings are checked against the method classes.
"""

from .execution import (
    REPLACED_DIR,
    execute_in_process,
    execute_subprocess,
    record_failure,
    set_aside_results,
    worker_main,
)
from .launchers import (
    LAUNCHERS,
    SweepResult,
    check_launcher,
    dry_run_lines,
    run_sweep,
    slurm_parameters,
    visible_gpus,
)
from .planning import (
    FLAGS,
    RUN_ARGUMENTS,
    PlannedRun,
    Run,
    Sweep,
    check_changed,
    command_line,
    plan_sweep,
)
from .sweep_file import (
    DATA_SETTINGS,
    KEYS,
    PACKAGE_PRESETS,
    PACKAGE_SWEEPS,
    check_variant_names,
    describe_sweeps,
    locate_preset_file,
    locate_sweep_file,
    read_sweep,
    select_variants,
    shipped_sweeps,
)

__all__ = [
    "DATA_SETTINGS",
    "FLAGS",
    "KEYS",
    "LAUNCHERS",
    "PACKAGE_PRESETS",
    "PACKAGE_SWEEPS",
    "REPLACED_DIR",
    "RUN_ARGUMENTS",
    "PlannedRun",
    "Run",
    "Sweep",
    "SweepResult",
    "check_changed",
    "check_launcher",
    "check_variant_names",
    "command_line",
    "describe_sweeps",
    "dry_run_lines",
    "execute_in_process",
    "execute_subprocess",
    "locate_preset_file",
    "locate_sweep_file",
    "plan_sweep",
    "read_sweep",
    "record_failure",
    "run_sweep",
    "select_variants",
    "set_aside_results",
    "shipped_sweeps",
    "slurm_parameters",
    "visible_gpus",
    "worker_main",
]
