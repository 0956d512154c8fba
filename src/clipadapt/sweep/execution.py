"""Executing one run of a sweep: in this process, or in a child process (`python -m clipadapt.sweep`)
whose output goes to the run's run.log. A failure is recorded in the run's failed.json and never stops
the sweep; a rerun's earlier results wait in the run's .replaced/ until it finishes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import traceback

from .. import run as run_api
from ..errors import ClipadaptError, one_line
from ..fileio import write_json
from ..run import RUN_FILES
from ..run_logging import TB_DIR


def record_failure(run_dir: str, record: dict, error: str, returncode: int | None) -> None:
    write_json(
        os.path.join(run_dir, "failed.json"), {**record, "error": error, "returncode": returncode}
    )


REPLACED_DIR = ".replaced"  # a rerun run's earlier results, kept until the rerun finishes (report skips dot folders)


def set_aside_results(run_dir: str) -> None:
    """Move a finished run's files into run_dir/.replaced before it is rerun over, so that a rerun that
    fails or is interrupted loses nothing; the next finished run of the folder removes them."""
    if not os.path.exists(os.path.join(run_dir, "metrics.json")):
        return  # nothing finished to keep: an interrupted run's files are replaced as --overwrite does
    kept = os.path.join(run_dir, REPLACED_DIR)
    shutil.rmtree(kept, ignore_errors=True)  # results older than the finished ones being set aside
    os.makedirs(kept)
    for name in (*RUN_FILES, TB_DIR):
        if os.path.exists(os.path.join(run_dir, name)):
            os.replace(os.path.join(run_dir, name), os.path.join(kept, name))


def execute_in_process(
    kind: str, kwargs: dict, record: dict, run_dir: str, child: bool = False
) -> str | None:
    """Run one run-API call (`train` or `transfer`) in this process; on failure record failed.json and
    return the error. In a sweep's child process (`child`) failed.json also gets the exit code the child
    ends with, as the command line's: 2 for an input error, 1 for a crash."""
    calls = {"train": run_api.train, "transfer": run_api.transfer}
    os.makedirs(run_dir, exist_ok=True)
    if kwargs.get("overwrite"):
        set_aside_results(run_dir)
    kept = os.path.join(run_dir, REPLACED_DIR)
    code = 2
    try:
        calls[kind](**kwargs)
        shutil.rmtree(
            kept, ignore_errors=True
        )  # the rerun finished: what it replaced is no longer needed
        return None
    except KeyboardInterrupt:
        raise
    except ClipadaptError as err:
        error = one_line(str(err)) or type(err).__name__
    except OSError as err:
        if (
            err.filename
        ):  # a path the run was given (a data folder, an output file): the user's to fix
            error = f"cannot use '{err.filename}': {err.strerror}"
        else:
            error, code = _crash(run_dir, err), 1
    except BaseException as err:  # noqa: BLE001 - a crashing run must not stop the sweep
        error, code = _crash(run_dir, err), 1
    if os.path.isdir(kept):
        error += f"; the results it was rerun over are kept in {kept}"
    record_failure(run_dir, record, error, code if child else None)
    return error


def _crash(run_dir: str, err: BaseException) -> str:
    """Write the traceback of an unexpected error to run_dir/error.log; its one-line summary."""

    with open(os.path.join(run_dir, "error.log"), "w") as f:
        traceback.print_exc(file=f)
    return f"{type(err).__name__}: {one_line(str(err))} (traceback in error.log)"


def execute_subprocess(
    kind: str, kwargs: dict, record: dict, run_dir: str, env: dict
) -> str | None:
    """Run one run-API call in a child process (`python -m clipadapt.sweep`, its output in run.log); the
    child records a failure itself, the parent one that killed the child."""
    os.makedirs(run_dir, exist_ok=True)
    log_path = os.path.join(run_dir, "run.log")
    call = json.dumps({"kind": kind, "kwargs": kwargs, "record": record, "run_dir": run_dir})
    with open(log_path, "w") as f:
        rc = subprocess.run(
            [sys.executable, "-m", "clipadapt.sweep", call],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
        ).returncode
    if rc == 0:
        return None
    failed = os.path.join(run_dir, "failed.json")
    if os.path.exists(failed):
        with open(failed) as f:
            return json.load(f)["error"]
    with open(log_path, errors="replace") as f:
        lines = [line.strip() for line in f.read().replace("\r", "\n").splitlines() if line.strip()]
    error = (lines[-1] if lines else f"exit code {rc}") + " (full output in run.log)"
    record_failure(run_dir, record, error, rc)
    return error


def worker_main(argv: list[str]) -> int:
    """A sweep's child process: one run-API call given as JSON; exit 0 when it finished, else 2 or 1 as failed.json says."""
    logging.basicConfig(
        level=logging.INFO, format="%(message)s"
    )  # this process's own output: its run.log
    call = json.loads(argv[0])
    if (
        execute_in_process(
            call["kind"], call["kwargs"], call["record"], call["run_dir"], child=True
        )
        is None
    ):
        return 0
    with open(os.path.join(call["run_dir"], "failed.json")) as f:
        return json.load(f)["returncode"]
