"""Launching a sweep's runs: one after another in this process, `--jobs N` child processes (each pinned
to a GPU on CUDA), or one submitit job array (SLURM, or submitit's local executor); and the dry run,
which prints what a launch would do."""

from __future__ import annotations

import os
import queue
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..errors import ClipadaptError
from ..fileio import write_json
from ..registry import import_path_for_children
from .execution import execute_in_process, execute_subprocess, record_failure
from .planning import Run, Sweep, check_changed, command_line, plan_sweep

LAUNCHERS = ("local", "slurm", "submitit-local")


def visible_gpus(gpus: str | None) -> list[str]:
    """GPU ids to pin runs to: --gpus, else CUDA_VISIBLE_DEVICES, else every GPU torch sees."""
    if gpus:
        return [g.strip() for g in gpus.split(",") if g.strip()]
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        return [g.strip() for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    import torch  # deferred: only here, to count the GPUs; a sweep's planning loads no torch

    return [str(i) for i in range(torch.cuda.device_count())]


@dataclass
class SweepResult:
    """How many runs were skipped, finished and failed, and the failures' errors."""

    total: int
    skipped: int
    finished: int
    failed: dict[str, str]


def slurm_parameters(slurm: dict, jobs: int) -> dict:
    """submitit's parameters for the SLURM job array: time, GPUs, CPUs and partition per task, `jobs` at once."""
    params = {
        "timeout_min": int(slurm.get("time") or 60),
        "gpus_per_node": int(slurm.get("gpus", 1)),
        "cpus_per_task": int(slurm.get("cpus") or 8),
        "nodes": 1,
        "tasks_per_node": 1,
        "slurm_array_parallelism": jobs,
    }
    if slurm.get("partition"):
        params["slurm_partition"] = slurm["partition"]
    return params


def _launcher_device(launcher: str, device: str, slurm: dict) -> str:
    """A SLURM task with GPUs runs on its GPU (submitit's task sees only its own)."""
    if launcher == "slurm" and device == "cpu" and int(slurm.get("gpus", 1)) > 0:
        return "cuda"
    return device


def check_launcher(launcher: str) -> None:
    """The launcher exists and can run here: slurm needs submitit and sbatch on PATH."""
    if launcher not in LAUNCHERS:
        raise ClipadaptError(f"unknown launcher '{launcher}'; known: {', '.join(LAUNCHERS)}")
    if launcher == "local":
        return
    try:
        import submitit  # noqa: F401 - optional (clipadapt[slurm]): deferred to the launchers that need it
    except ImportError:
        raise ClipadaptError(
            f"--launcher {launcher} needs submitit: pip install 'clipadapt[slurm]'"
        ) from None
    if launcher == "slurm" and shutil.which("sbatch") is None:
        raise ClipadaptError(
            "--launcher slurm: no SLURM here (no 'sbatch' on PATH); run it on the cluster's login "
            "node, or use --launcher local (--dry-run shows what would be submitted)"
        )


def dry_run_lines(
    sweep: Sweep,
    out: str,
    data_root: str | None = None,
    jobs: int = 1,
    device: str | None = None,
    launcher: str = "local",
    slurm: dict | None = None,
    rerun_changed: bool = False,
) -> list[str]:
    """What `clipadapt sweep --dry-run` prints: the command of each run it would start, with its action and why
    after a `#`, a `# skip` line for each run it leaves, and under --launcher slurm first the job array that
    would be submitted. The output is a shell script; nothing is written."""
    slurm = slurm or {}
    data_root = os.path.abspath(os.path.expanduser(data_root or sweep.data_root or "DATA"))
    device = _launcher_device(launcher, device or sweep.device, slurm)
    plan = plan_sweep(sweep, out, data_root, device)
    todo = [p for p in plan if p.action == "start" or (p.action == "rerun" and rerun_changed)]
    lines = []
    if launcher == "slurm":
        params = slurm_parameters(slurm, jobs)
        lines += [
            f"# slurm job array: {len(todo)} task(s), at most {jobs} at once (--jobs)",
            f"#   partition: {params.get('slurm_partition', '(the cluster default)')}",
            f"#   time: {params['timeout_min']} min per task",
            f"#   gpus per task: {params['gpus_per_node']}",
            f"#   cpus per task: {params['cpus_per_task']}",
        ]
    task = 0
    for p in plan:
        if p not in todo:
            needs = " (needs --rerun-changed)" if p.action == "rerun" else ""
            lines.append(f"# {p.action} {p.run.dir}: {p.why}{needs}")
            continue
        argv = command_line(
            *sweep.run_call(p.run, out, data_root, device, overwrite=p.action == "rerun")
        )
        where = f"task {task}, " if launcher == "slurm" else ""
        lines.append(" ".join(["clipadapt", *argv]) + f"  # {where}{p.action}: {p.why}")
        task += 1
    changed = sum(p.action == "rerun" for p in plan)
    if changed and not rerun_changed:
        lines.append(
            f"# {changed} run(s) with changed settings: the sweep refuses to start without --rerun-changed"
        )
    return lines


def run_sweep(
    sweep: Sweep,
    out: str,
    data_root: str | None = None,
    jobs: int = 1,
    device: str | None = None,
    gpus: str | None = None,
    launcher: str = "local",
    slurm: dict | None = None,
    progress: bool = True,
    rerun_changed: bool = False,
) -> SweepResult:
    """Run every unfinished run of the sweep; failures are recorded and do not stop the others. Every check
    (the launcher, finished runs made with other settings) comes before anything is written."""
    data_root = data_root or sweep.data_root
    if not data_root:
        raise ClipadaptError("give --data-root (the sweep file has no data_root)")
    data_root = os.path.abspath(os.path.expanduser(data_root))
    check_launcher(launcher)
    if jobs < 1:
        raise ClipadaptError(f"--jobs must be at least 1, got {jobs}")
    slurm = slurm or {}
    device = _launcher_device(launcher, device or sweep.device, slurm)
    plan = plan_sweep(sweep, out, data_root, device)
    if not rerun_changed:
        check_changed(plan, out)
    os.makedirs(out, exist_ok=True)
    manifest = {
        "sweep_file": os.path.abspath(sweep.path),
        "protocol": sweep.protocol,
        "runs": [r.record() for r in sweep.runs],
    }
    if sweep.study:
        manifest["study"] = sweep.study
    write_json(os.path.join(out, f"sweep-{Path(sweep.path).stem}.json"), manifest)
    todo = [p.run for p in plan if p.action != "skip"]
    rerun = {p.run.dir for p in plan if p.action == "rerun"}
    for run in todo:
        if os.path.exists(os.path.join(out, run.dir, "failed.json")):
            os.remove(os.path.join(out, run.dir, "failed.json"))  # tried again

    def call(run: Run, run_device: str) -> tuple[str, dict]:
        return sweep.run_call(run, out, data_root, run_device, overwrite=run.dir in rerun)

    for p in plan:
        if p.action == "rerun":  # --rerun-changed: say which, before their old results are replaced
            tqdm.write(f"rerun {p.run.dir}: {p.why}", file=sys.stderr)
    result = SweepResult(len(sweep.runs), len(sweep.runs) - len(todo), 0, {})
    bar = tqdm(
        total=len(sweep.runs),
        initial=result.skipped,
        desc="sweep",
        unit="run",
        disable=not progress,
    )

    def finish(run: Run, error: str | None) -> None:
        if error is None:
            result.finished += 1
        else:
            result.failed[run.dir] = error
            tqdm.write(f"FAILED {run.dir}: {error}", file=sys.stderr)
        bar.update(1)
        bar.set_postfix(done=result.finished + result.skipped, failed=len(result.failed))

    if launcher != "local":
        _run_submitit(call, todo, out, device, launcher, slurm, jobs, finish)
    elif jobs == 1:
        for run in todo:
            bar.set_postfix_str(run.dir)
            finish(
                run,
                execute_in_process(*call(run, device), run.record(), os.path.join(out, run.dir)),
            )
    else:
        _run_parallel(call, todo, out, device, jobs, gpus, finish)
    bar.close()
    return result


def _run_parallel(
    call, todo: list[Run], out: str, device: str, jobs: int, gpus: str | None, finish
) -> None:
    """N child processes at once; on CUDA each pinned to one GPU through CUDA_VISIBLE_DEVICES."""
    on_gpu = device.startswith("cuda")
    ids = visible_gpus(gpus) if on_gpu else []
    if on_gpu and not ids:
        raise ClipadaptError("device is cuda but no GPU is visible; pass --gpus or --device cpu")
    slots: queue.Queue = queue.Queue()
    for i in range(jobs):  # more jobs than GPUs: several runs share a GPU, spread evenly
        slots.put(ids[i % len(ids)] if ids else None)
    threads = str(max(1, (os.cpu_count() or 1) // jobs))

    def work(run: Run) -> tuple[Run, str | None]:
        gpu = slots.get()
        try:
            env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads)}
            env = import_path_for_children(env)  # methods loaded by class path import there too
            run_device = device
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = gpu
                run_device = "cuda:0"  # the one GPU the child sees
            kind, kwargs = call(run, run_device)
            return run, execute_subprocess(
                kind, kwargs, run.record(), os.path.join(out, run.dir), env
            )
        finally:
            slots.put(gpu)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in as_completed([pool.submit(work, run) for run in todo]):
            finish(*future.result())


def _run_submitit(
    call, todo: list[Run], out: str, device: str, launcher: str, slurm: dict, jobs: int, finish
) -> None:
    """The runs as one submitit job array (SLURM, `jobs` tasks at once; or submitit's local executor); waits for
    them all."""
    import submitit  # optional (clipadapt[slurm])

    if not todo:
        return
    folder = os.path.join(out, ".submitit", "%j")
    if launcher == "submitit-local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=int(slurm.get("time") or 60))
    else:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        executor.update_parameters(**slurm_parameters(slurm, jobs))
    calls = [call(run, device) for run in todo]
    # one array submission (sbatch --array) for every run; submitit pickles the function and its arguments
    submitted = executor.map_array(
        execute_in_process,
        [kind for kind, _ in calls],
        [kw for _, kw in calls],
        [run.record() for run in todo],
        [os.path.join(out, run.dir) for run in todo],
    )
    for run, job in zip(todo, submitted, strict=True):
        try:
            error = job.result()
        except Exception as err:  # noqa: BLE001 - the job itself died (node failure, timeout)
            error = f"{type(err).__name__}: {' '.join(str(err).split())[-300:]}"
            record_failure(os.path.join(out, run.dir), run.record(), error, None)
        finish(run, error)
