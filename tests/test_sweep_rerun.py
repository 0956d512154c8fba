"""`clipadapt sweep`: a rerun with changed settings, the SLURM path (dry run, no SLURM, one job array),
and type errors in a sweep file."""

import os

import pytest

from clipadapt.cli import main

SWEEP = """
protocol: base2novel
methods: [zeroshot, mma]
datasets: [eurosat]
seeds: [1]
shots: [2]
backbone: clipadapt-tiny
pretrained: none
overrides: {epochs: 2, batch_size: 4, augment: false, optimizer: adamw, lr: 0.01}
method_overrides: {mma: {scale: 0.1}}
presets: {zeroshot: none, mma: none}
"""
MMA = "base2novel/mma/eurosat/shots2/seed1"
ZS = "base2novel/zeroshot/eurosat/shots2/seed1"


def _write(tmp_path, text, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _files(folder):
    return {
        str(p): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _one_error_line(capsys):
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("clipadapt: error:"), err
    return err[0]


def test_changed_settings_refuse_then_rerun_exactly_the_changed_runs(fake_root, tmp_path, capsys):
    sweep, out = _write(tmp_path, SWEEP), tmp_path / "out"
    assert main(["sweep", sweep, "--out", str(out), "--data-root", fake_root]) == 0
    capsys.readouterr()
    before = _files(out)
    # same settings, the data folder named by another path: both skipped
    assert (
        main(["sweep", sweep, "--out", str(out), "--data-root", fake_root + "/.", "--dry-run"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"# skip {ZS}: finished with the same settings",
        f"# skip {MMA}: finished with the same settings",
    ]
    # epochs=5: refused before anything runs, one line naming the folder and the change; nothing touched
    assert main(["sweep", sweep, "--out", str(out), "--data-root", fake_root, "epochs=5"]) == 2
    line = _one_error_line(capsys)
    assert (
        os.path.join(str(out), MMA) in line
        and "epochs 2 -> 5" in line
        and "--rerun-changed" in line
    )
    assert _files(out) == before
    # the dry run says which runs would be skipped and rerun, and why
    assert (
        main(["sweep", sweep, "--out", str(out), "--data-root", fake_root, "--dry-run", "epochs=5"])
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert f"# rerun {MMA}: settings changed: epochs 2 -> 5 (needs --rerun-changed)" in lines
    assert (
        f"# skip {ZS}: finished with the same settings" in lines
    )  # zero-shot trains nothing: epochs do not apply
    assert (
        main(
            [
                "sweep",
                sweep,
                "--out",
                str(out),
                "--data-root",
                fake_root,
                "--dry-run",
                "--rerun-changed",
                "epochs=5",
            ]
        )
        == 0
    )
    commands = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("clipadapt")
    ]
    assert (
        len(commands) == 1
        and "--overwrite" in commands[0].split()
        and "epochs=5" in commands[0].split()
    )
    assert commands[0].endswith("  # rerun: settings changed: epochs 2 -> 5")
    # --rerun-changed: the mma run again with epochs 5, the zero-shot run's files untouched
    assert (
        main(
            [
                "sweep",
                sweep,
                "--out",
                str(out),
                "--data-root",
                fake_root,
                "--rerun-changed",
                "epochs=5",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "2 runs: 1 already finished, 1 finished now, 0 failed" in captured.out
    assert f"rerun {MMA}: settings changed: epochs 2 -> 5" in captured.err
    assert "epochs: 5" in (out / MMA / "config.yaml").read_text()
    assert {k: v for k, v in _files(out).items() if ZS in k} == {
        k: v for k, v in before.items() if ZS in k
    }
    assert main(["sweep", sweep, "--out", str(out), "--data-root", fake_root, "epochs=5"]) == 0
    assert "2 already finished" in capsys.readouterr().out


def test_a_changed_preset_file_is_a_changed_setting(tmp_path, capsys):
    from clipadapt.run import changed_settings, planned_record
    from clipadapt.sweep import read_sweep

    preset = tmp_path / "mine.yaml"
    preset.write_text("scale: 0.1\n")
    sweep = read_sweep(_write(tmp_path, SWEEP.replace("mma: none}", "mma: mine.yaml}")))
    run = next(r for r in sweep.runs if r.method == "mma")
    kind, kwargs = sweep.run_call(run, str(tmp_path / "out"), str(tmp_path / "data"))
    folder = tmp_path / "out" / run.dir
    folder.mkdir(parents=True)
    import yaml

    record = planned_record(
        **{k: v for k, v in kwargs.items() if k not in ("out", "device", "feature_cache")}
    )
    (folder / "config.yaml").write_text(yaml.safe_dump({**record, "data_root": "/elsewhere"}))
    assert changed_settings(**kwargs) == []  # the data folder's path is not a setting
    preset.write_text("scale: 0.1\nadapter_dim: 8\n")
    changes = changed_settings(**kwargs)
    assert [c[0] for c in changes] == ["adapter_dim"] and changes[0][2] == 8


def test_slurm_off_a_cluster_is_one_line_and_writes_nothing(
    fake_root, tmp_path, monkeypatch, capsys
):
    pytest.importorskip("submitit")
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no sbatch
    out = tmp_path / "out"
    assert (
        main(
            [
                "sweep",
                _write(tmp_path, SWEEP),
                "--out",
                str(out),
                "--data-root",
                fake_root,
                "--launcher",
                "slurm",
                "--partition",
                "gpu",
                "--time",
                "120",
                "--gpus-per-job",
                "1",
            ]
        )
        == 2
    )
    assert "no SLURM" in _one_error_line(capsys) and not out.exists()


def test_slurm_dry_run_prints_the_job_array(fake_root, tmp_path, monkeypatch, capsys):
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    out = tmp_path / "out"
    assert (
        main(
            [
                "sweep",
                _write(tmp_path, SWEEP.replace("seeds: [1]", "seeds: [1, 2]")),
                "--out",
                str(out),
                "--data-root",
                fake_root,
                "--launcher",
                "slurm",
                "--partition",
                "gpu",
                "--time",
                "120",
                "--gpus-per-job",
                "1",
                "--cpus-per-job",
                "6",
                "--jobs",
                "3",
                "--dry-run",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[:5] == [
        "# slurm job array: 4 task(s), at most 3 at once (--jobs)",
        "#   partition: gpu",
        "#   time: 120 min per task",
        "#   gpus per task: 1",
        "#   cpus per task: 6",
    ]
    tasks = lines[5:]
    assert [t.split("  # ")[1] for t in tasks] == [
        f"task {i}, start: not run yet" for i in range(4)
    ]
    assert all(t.startswith("clipadapt train ") and " --device cuda " in t for t in tasks)
    assert "--seed 2" in tasks[-1] and not out.exists()


def test_slurm_parameters_make_jobs_the_array_parallelism():
    from clipadapt.sweep import slurm_parameters

    assert slurm_parameters({"partition": "gpu", "time": 120, "gpus": 2, "cpus": 4}, 3) == {
        "timeout_min": 120,
        "gpus_per_node": 2,
        "cpus_per_task": 4,
        "nodes": 1,
        "tasks_per_node": 1,
        "slurm_array_parallelism": 3,
        "slurm_partition": "gpu",
    }


@pytest.mark.parametrize(
    "old, new, fragments",
    [
        ("seeds: [1]", "seeds: [one]", ["seeds", "'one'", "whole numbers"]),
        ("shots: [2]", "shots: [x]", ["shots", "'x'"]),
        ("shots: [2]", "shots: [2.5]", ["shots", "2.5"]),
        ("seeds: [1]", "seeds: [true]", ["seeds", "True"]),
        (
            "\noverrides: {epochs: 2, batch_size: 4, augment: false, optimizer: adamw, lr: 0.01}",
            "\noverrides: [epochs]",
            ["'overrides'", "maps settings"],
        ),
        (
            "method_overrides: {mma: {scale: 0.1}}",
            "method_overrides: {mma: [scale]}",
            ["method_overrides", "mma"],
        ),
        ("method_overrides: {mma: {scale: 0.1}}", "method_overrides: [mma]", ["method_overrides"]),
        (
            "presets: {zeroshot: none, mma: none}",
            "presets: {zeroshot: none, mma: [a]}",
            ["preset", "mma"],
        ),
        ("backbone: clipadapt-tiny", "backbone: [clipadapt-tiny]", ["backbone", "one name"]),
        (
            "methods: [zeroshot, mma]",
            "variants: {a: {method: mma}}\nplot: 5",
            ["'plot'", "setting names", "5"],
        ),
        (
            "methods: [zeroshot, mma]",
            "variants: {a: {method: mma}}\nplot: base_ratio",
            ["'plot'", "base_ratio"],
        ),
        (
            "methods: [zeroshot, mma]",
            "variants: {a: {method: mma}}\npaper: [a]",
            ["'paper'", "variant names"],
        ),
    ],
)
def test_type_errors_in_a_sweep_file_name_the_file_key_and_value(
    fake_root, tmp_path, capsys, old, new, fragments
):
    assert old in SWEEP
    path = _write(tmp_path, SWEEP.replace(old, new))
    out = tmp_path / "out"
    assert main(["sweep", path, "--out", str(out), "--data-root", fake_root]) == 2
    line = _one_error_line(capsys)
    assert path in line
    for fragment in fragments:
        assert fragment in line, line
    assert not out.exists()


def test_a_failed_rerun_keeps_the_results_it_was_rerun_over_until_a_rerun_finishes(
    fake_root, tmp_path, capsys, monkeypatch
):
    import json

    from clipadapt import run as run_api

    sweep, out = _write(tmp_path, SWEEP), tmp_path / "out"
    assert main(["sweep", sweep, "--out", str(out), "--data-root", fake_root]) == 0
    old_metrics = (out / MMA / "metrics.json").read_bytes()
    real_train = run_api.train

    def crashing_train(**kwargs):
        if kwargs["method"] == "mma":
            raise RuntimeError("out of memory")
        return real_train(**kwargs)

    monkeypatch.setattr(run_api, "train", crashing_train)
    assert (
        main(
            [
                "sweep",
                sweep,
                "--out",
                str(out),
                "--data-root",
                fake_root,
                "--rerun-changed",
                "epochs=3",
            ]
        )
        == 1
    )
    kept = out / MMA / ".replaced"
    assert (kept / "metrics.json").read_bytes() == old_metrics and (
        kept / "adapter.safetensors"
    ).exists()
    failure = json.loads((out / MMA / "failed.json").read_text())
    assert "out of memory" in failure["error"] and str(kept) in failure["error"]
    assert "out of memory" in capsys.readouterr().err
    assert (
        main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    )  # .replaced is not a run of its own
    assert "FAILED `" + MMA in (tmp_path / "rep" / "report.md").read_text()
    # the next sweep tries the failed run again; once it finishes, the old results go
    monkeypatch.setattr(run_api, "train", real_train)
    assert main(["sweep", sweep, "--out", str(out), "--data-root", fake_root, "epochs=3"]) == 0
    assert "epochs: 3" in (out / MMA / "config.yaml").read_text() and not kept.exists()


def test_keys_that_change_no_number_and_settings_added_since_at_their_default_are_not_changes(
    tmp_path,
):
    import yaml

    from clipadapt.run import changed_settings, planned_record
    from clipadapt.sweep import read_sweep

    sweep = read_sweep(_write(tmp_path, SWEEP))
    run = next(r for r in sweep.runs if r.method == "mma")
    kwargs = sweep.run_call(run, str(tmp_path / "out"), str(tmp_path / "data"))[1]
    folder = tmp_path / "out" / run.dir
    folder.mkdir(parents=True)
    record = planned_record(
        **{k: v for k, v in kwargs.items() if k not in ("out", "device", "feature_cache")}
    )
    older = {
        k: v for k, v in record.items() if k != "logger"
    }  # written before the logger setting existed
    older.update(workers=7, log_every=1, preset="/elsewhere/mma_fewshot.yaml", world_size=4)
    (folder / "config.yaml").write_text(yaml.safe_dump(older))
    assert changed_settings(**kwargs) == []
    (folder / "config.yaml").write_text(
        yaml.safe_dump({k: v for k, v in older.items() if k != "scale"})
    )
    assert changed_settings(**kwargs) == [
        ("scale", None, 0.1)
    ]  # missing, and not at its default (0.001): changed
