"""`clipadapt sweep`: the grid's layout, skip finished, resume interrupted, failures recorded, bad input."""

import json
import os
import shutil

import pytest

from clipadapt.cli import main

SWEEP = """
protocol: base2novel
methods: [zeroshot, mma]
datasets: [eurosat, dtd]
seeds: [1, 2]
shots: [2]
backbone: clipadapt-tiny
pretrained: none
overrides: {epochs: 2, batch_size: 4, augment: false, optimizer: adamw, lr: 0.01}
method_overrides: {mma: {scale: 0.1}}
presets: {zeroshot: none, mma: none}   # the tiny test backbone: the methods' own defaults plus overrides
"""


def _write(tmp_path, text, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.fixture()
def broken_root(fake_root, tmp_path):
    """eurosat as generated, dtd without its split file: dtd's runs fail."""
    root = tmp_path / "data"
    shutil.copytree(os.path.join(fake_root, "eurosat"), root / "eurosat")
    shutil.copytree(os.path.join(fake_root, "dtd"), root / "dtd")
    split = root / "dtd" / "split_zhou_DescribableTextures.json"
    shutil.move(split, tmp_path / "dtd_split.json")
    return root, split


@pytest.mark.cli
def test_sweep_records_failures_skips_finished_and_retries(broken_root, tmp_path, capsys):
    root, split = broken_root
    out = tmp_path / "out"
    # two child processes at once: the eurosat run finishes, the dtd run fails and is recorded
    small = _write(
        tmp_path, SWEEP.replace("[zeroshot, mma]", "[mma]").replace("[1, 2]", "[1]"), "small.yaml"
    )
    assert main(["sweep", small, "--out", str(out), "--data-root", str(root), "--jobs", "2"]) == 1
    assert "1 failed" in capsys.readouterr().out
    failed = json.loads((out / "base2novel/mma/dtd/shots2/seed1/failed.json").read_text())
    assert "split_zhou_DescribableTextures.json" in failed["error"] and failed["returncode"] == 2
    assert (out / "base2novel/mma/dtd/shots2/seed1/run.log").exists()
    finished = out / "base2novel/mma/eurosat/shots2/seed1/metrics.json"
    assert json.loads(finished.read_text())["dataset"] == "eurosat"
    stamp = finished.stat().st_mtime_ns
    # the whole grid, in this process: dtd still fails, everything else finishes
    sweep = _write(tmp_path, SWEEP)
    assert main(["sweep", sweep, "--out", str(out), "--data-root", str(root)]) == 1
    assert "8 runs: 1 already finished, 3 finished now, 4 failed" in capsys.readouterr().out
    runs = json.loads((out / "sweep-sweep.json").read_text())["runs"]
    assert len(runs) == 8 and runs[0]["dir"] == "base2novel/zeroshot/eurosat/shots2/seed1"
    for method in ("zeroshot", "mma"):
        for seed in (1, 2):
            assert (
                json.loads(
                    (
                        out / f"base2novel/{method}/eurosat/shots2/seed{seed}/metrics.json"
                    ).read_text()
                )["seed"]
                == seed
            )
            failed = json.loads(
                (out / f"base2novel/{method}/dtd/shots2/seed{seed}/failed.json").read_text()
            )
            assert "split_zhou_DescribableTextures.json" in failed["error"]
    assert main(["report", str(out)]) == 0  # the report lists the failures beside the tables
    assert "FAILED `base2novel/mma/dtd/shots2/seed2`" in (out / "report.md").read_text()
    # fixed data: the failed runs run again, the finished ones are skipped
    shutil.move(tmp_path / "dtd_split.json", split)
    assert main(["sweep", sweep, "--out", str(out), "--data-root", str(root)]) == 0
    assert "4 already finished, 4 finished now, 0 failed" in capsys.readouterr().out
    assert finished.stat().st_mtime_ns == stamp
    assert not list(out.glob("**/failed.json"))


def test_sweep_resumes_an_interrupted_run(fake_root, tmp_path, capsys):
    sweep = _write(
        tmp_path,
        SWEEP.replace("[eurosat, dtd]", "[eurosat]")
        .replace("[1, 2]", "[1]")
        .replace("[zeroshot, mma]", "[mma]"),
    )
    out = tmp_path / "out"
    assert main(["sweep", sweep, "--out", str(out), "--data-root", fake_root]) == 0
    run = out / "base2novel/mma/eurosat/shots2/seed1"
    first = json.loads((run / "metrics.json").read_text())
    os.remove(run / "metrics.json")  # as if killed after its last checkpoint
    assert main(["sweep", sweep, "--out", str(out), "--data-root", fake_root]) == 0
    again = json.loads((run / "metrics.json").read_text())
    assert [
        json.loads(line).get("event") for line in (run / "log.jsonl").read_text().splitlines()
    ].count("resume") == 1
    assert (again["base"], again["novel"]) == (first["base"], first["novel"])


@pytest.mark.parametrize(
    "text, fragments",
    [
        (
            SWEEP.replace("protocol: base2novel", "protocol: base2new"),
            ["unknown protocol 'base2new'", "base2novel"],
        ),
        (
            SWEEP.replace("[eurosat, dtd]", "[eurosat, mnist]"),
            ["unknown dataset 'mnist'", "caltech101"],
        ),
        (SWEEP.replace("[zeroshot, mma]", "[zeroshot, mmma]"), ["unknown method 'mmma'"]),
        (SWEEP.replace("seeds:", "seed:"), ["unknown key 'seed'", "did you mean 'seeds'"]),
        (SWEEP.replace("scale: 0.1", "scael: 0.1"), ["method 'mma'", "scael"]),
        (
            SWEEP.replace("protocol: base2novel", "protocol: dg"),
            ["'eurosat' is not a domain_generalization source"],
        ),
    ],
)
def test_bad_sweep_files_fail_with_one_line_and_touch_nothing(
    fake_root, tmp_path, capsys, text, fragments
):
    out = tmp_path / "out"
    (out / "keep").mkdir(parents=True)
    (out / "keep" / "metrics.json").write_text("{}")
    assert main(["sweep", _write(tmp_path, text), "--out", str(out), "--data-root", fake_root]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("clipadapt: error:"), err
    for fragment in fragments:
        assert fragment in err[0]
    assert sorted(p.name for p in out.rglob("*")) == ["keep", "metrics.json"]


@pytest.mark.cli
def test_sweep_through_submitit_local_executor(fake_root, tmp_path, monkeypatch, capsys):
    submitit = pytest.importorskip("submitit")
    arrays, map_array = [], submitit.LocalExecutor.map_array

    def spy(self, fn, *iterables):
        arrays.append(len(iterables[0]))
        return map_array(self, fn, *iterables)

    def submit(self, *args, **kwargs):
        raise AssertionError("one submission per run: the runs go as one job array")

    monkeypatch.setattr(submitit.LocalExecutor, "map_array", spy)
    monkeypatch.setattr(submitit.LocalExecutor, "submit", submit)
    text = SWEEP.replace("[zeroshot, mma]", "[zeroshot]").replace("[eurosat, dtd]", "[eurosat]")
    sweep = _write(tmp_path, text.replace("method_overrides: {mma: {scale: 0.1}}", ""))
    out = tmp_path / "out"
    assert (
        main(
            [
                "sweep",
                sweep,
                "--out",
                str(out),
                "--data-root",
                fake_root,
                "--launcher",
                "submitit-local",
                "--jobs",
                "2",
            ]
        )
        == 0
    )
    assert "2 runs: 0 already finished, 2 finished now, 0 failed" in capsys.readouterr().out
    assert arrays == [2]  # one array of both runs
    for seed in (1, 2):
        assert (
            json.loads(
                (out / f"base2novel/zeroshot/eurosat/shots2/seed{seed}/metrics.json").read_text()
            )["seed"]
            == seed
        )
    assert list((out / ".submitit").iterdir())  # the jobs' own folders (logs, pickles)
    sweep = _write(
        tmp_path, text.replace("method_overrides: {mma: {scale: 0.1}}", "").replace("[1, 2]", "[1]")
    )
    # a job that fails inside is recorded like a local failure
    assert (
        main(
            [
                "sweep",
                sweep,
                "--out",
                str(tmp_path / "bad"),
                "--data-root",
                str(tmp_path / "nowhere"),
                "--launcher",
                "submitit-local",
            ]
        )
        == 1
    )
    failed = json.loads(
        (tmp_path / "bad/base2novel/zeroshot/eurosat/shots2/seed1/failed.json").read_text()
    )
    assert "nowhere" in failed["error"]


def test_domain_generalization_sweep_reuses_the_cross_dataset_adapters(fake_root, tmp_path, capsys):
    common = (
        "methods: [mma]\ndatasets: [imagenet]\nseeds: [1]\nshots: [2]\nbackbone: clipadapt-tiny\n"
        "pretrained: none\npresets: {mma: none}\n"
    )
    xd = _write(
        tmp_path,
        "protocol: cross_dataset\n" + common + "overrides: {epochs: 1, batch_size: 4, "
        "augment: false, scale: 0.1}\n",
        "xd.yaml",
    )
    dg = _write(tmp_path, "protocol: dg\nadapters_from: cross_dataset\n" + common, "dg.yaml")
    out = tmp_path / "out"
    assert (
        main(["sweep", dg, "--out", str(out), "--data-root", fake_root]) == 1
    )  # nothing trained yet
    failed = json.loads(
        (out / "domain_generalization/mma/imagenet/shots2/seed1/failed.json").read_text()
    )
    assert "cross_dataset/mma/imagenet/shots2/seed1/adapter.safetensors" in failed["error"]
    assert main(["sweep", xd, "--out", str(out), "--data-root", fake_root]) == 0
    assert main(["sweep", dg, "--out", str(out), "--data-root", fake_root]) == 0
    a = json.loads((out / "cross_dataset/mma/imagenet/shots2/seed1/metrics.json").read_text())
    b = json.loads(
        (out / "domain_generalization/mma/imagenet/shots2/seed1/metrics.json").read_text()
    )
    assert b["source"] == a["source"] and b["checkpoint"].endswith(
        "cross_dataset/mma/imagenet/shots2/seed1/adapter.safetensors"
    )
    assert not (
        out / "domain_generalization/mma/imagenet/shots2/seed1/log.jsonl"
    ).exists()  # nothing trained
    assert main(["report", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert (
        "Cross-dataset transfer: source imagenet" in md
        and "Domain generalization: source imagenet" in md
    )
    assert "Runs not in the tables" not in md


def test_every_shipped_sweep_file_reads_and_names_its_presets():
    from pathlib import Path

    from clipadapt.sweep import read_sweep

    repo = Path(__file__).resolve().parents[1]
    files = (
        sorted((repo / "configs" / "sweeps").glob("*.yaml"))
        + sorted((repo / "studies").glob("*.yaml"))
        + [repo / "src/clipadapt/sweeps/synthetic_base2novel.yaml"]
    )
    assert {f.stem for f in files} >= {
        "base2novel",
        "cross_dataset",
        "domain_generalization",
        "fewshot",
        "synthetic_base2novel",
        "synthetic_presets_validation",
    }
    for f in files:
        sweep = read_sweep(str(f))
        trained = [r for r in sweep.runs if r.method not in ("zeroshot",) and not r.adapters_from]
        assert all(r.preset for r in trained), f  # every trained method runs with a preset
    xd = read_sweep(str(files[0].parent / "cross_dataset.yaml"))
    mma = next(r for r in xd.runs if r.method == "mma")
    assert mma.preset.endswith("presets/mma_cross_dataset.yaml")


def test_settings_after_the_sweep_options_reach_every_run(tmp_path, capsys):
    sweep = _write(tmp_path, SWEEP)
    # The order docs/methods.md gives (`sweep FILE --out DIR eval_split=val`) and the order before --out.
    for argv in (
        ["sweep", sweep, "--out", str(tmp_path / "o"), "--dry-run", "epochs=1", "eval_split=val"],
        ["sweep", sweep, "epochs=1", "--out", str(tmp_path / "o"), "--dry-run", "eval_split=val"],
    ):
        assert main(argv) == 0
        commands = [
            line
            for line in capsys.readouterr().out.splitlines()
            if line.startswith("clipadapt train")
        ]
        words = [c.split() for c in commands]
        assert len(commands) == 8 and all('eval_split="val"' in w for w in words), (
            commands
        )  # zeroshot's too
        assert all("epochs=1" in w and "epochs=2" not in w for w in words if "mma" in w), commands
    with pytest.raises(SystemExit) as exit_info:  # anything else left over is still an error
        main(["sweep", sweep, "--out", str(tmp_path / "o"), "--dry-run", "stray"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: stray" in capsys.readouterr().err


def test_a_diverged_run_is_a_failed_run_of_the_sweep_and_of_the_report(fake_root, tmp_path, capsys):
    sweep = _write(
        tmp_path,
        SWEEP.replace("[zeroshot, mma]", "[mma]")
        .replace("[eurosat, dtd]", "[eurosat]")
        .replace("lr: 0.01", "lr: 1.0e+30")
        .replace("optimizer: adamw", "optimizer: sgd"),
    )
    out = tmp_path / "out"
    assert main(["sweep", sweep, "--out", str(out), "--data-root", fake_root]) == 1
    assert "2 failed" in capsys.readouterr().out
    for seed in (1, 2):
        run = out / f"base2novel/mma/eurosat/shots2/seed{seed}"
        failed = json.loads((run / "failed.json").read_text())
        assert "training diverged in epoch" in failed["error"]
        assert not (run / "metrics.json").exists() and not (run / "adapter.safetensors").exists()
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) in (0, 1)
    table = (tmp_path / "rep" / "report.md").read_text()
    assert (
        "training diverged" in table and "| mma |" not in table
    )  # listed as failed, never averaged
