"""`clipadapt report`: numbers checked against hand-computed means, stds and HMs on a folder of fake runs."""

import csv
import json
import math

import pytest

from clipadapt.cli import main
from clipadapt.references import REFERENCES


def _run(root, rel, **metrics):
    folder = root / rel
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))


def _b2n(root, method, dataset, seed, base, novel):
    hm = 2 * base * novel / (base + novel)
    _run(
        root,
        f"base2novel/{method}/{dataset}/shots16/seed{seed}",
        protocol="base2novel",
        method=method,
        dataset=dataset,
        shots=16,
        seed=seed,
        base=base,
        novel=novel,
        hm=hm,
    )


@pytest.fixture()
def runs(tmp_path):
    root = tmp_path / "runs"
    for seed, base, novel in [(1, 80, 70), (2, 82, 72), (3, 84, 71)]:
        _b2n(root, "mma", "dtd", seed, base, novel)
    for seed, base, novel in [(1, 90, 60), (2, 94, 64)]:
        _b2n(root, "mma", "eurosat", seed, base, novel)
    failed = root / "base2novel/mma/eurosat/shots16/seed3"
    failed.mkdir(parents=True)
    (failed / "failed.json").write_text(
        json.dumps(
            {
                "protocol": "base2novel",
                "method": "mma",
                "dataset": "eurosat",
                "shots": 16,
                "seed": 3,
                "error": "CUDA out of memory",
                "returncode": 1,
            }
        )
    )
    for seed in (1, 2, 3):
        _b2n(root, "coop", "dtd", seed, 85, 50)
    for seed in (1, 3):  # seed 2 of coop on eurosat never ran
        _b2n(root, "coop", "eurosat", seed, 95, 40)
    for seed, src, cal, dtd in [(1, 70, 90, 40), (2, 72, 92, 44)]:
        _run(
            root,
            f"cross_dataset/mma/imagenet/shots16/seed{seed}",
            protocol="cross_dataset",
            method="mma",
            dataset="imagenet",
            shots=16,
            seed=seed,
            source=src,
            caltech101=cal,
            dtd=dtd,
            targets=["caltech101", "dtd"],
            target_average=(cal + dtd) / 2,
        )
    for seed, shots, acc in [(1, 1, 50), (2, 1, 54), (1, 16, 70)]:
        _run(
            root,
            f"fewshot/mma/dtd/shots{shots}/seed{seed}",
            protocol="fewshot",
            method="mma",
            dataset="dtd",
            shots=shots,
            seed=seed,
            accuracy=acc,
        )
    return root


def test_report_numbers_match_hand_computation(runs, tmp_path, capsys):
    assert main(["report", str(runs), "--out", str(tmp_path / "rep"), "--references"]) == 0
    summary = json.loads((tmp_path / "rep" / "report.json").read_text())
    b2n = summary["base2novel/16"]["mma"]
    assert b2n["dtd"]["base"] == pytest.approx(82) and b2n["dtd"]["novel"] == pytest.approx(71)
    assert b2n["dtd"]["hm"] == pytest.approx(2 * 82 * 71 / 153)  # HM of the seed means
    assert b2n["eurosat"]["n"] == 2  # the failed seed is not averaged over
    assert b2n["Average"]["base"] == pytest.approx(87) and b2n["Average"]["novel"] == pytest.approx(
        66.5
    )
    assert b2n["Average"]["hm"] == pytest.approx(
        2 * 87 * 66.5 / 153.5
    )  # not the mean of the datasets' HMs
    assert b2n["Average"]["hm"] != pytest.approx(
        (b2n["dtd"]["hm"] + b2n["eurosat"]["hm"]) / 2, abs=0.1
    )
    rows = {
        (r["protocol"], r["method"], r["dataset"], r["shots"], r["column"]): r
        for r in csv.DictReader(open(tmp_path / "rep" / "report.csv"))
    }
    dtd_base = rows[("base2novel", "mma", "dtd", "16", "base")]
    assert (
        float(dtd_base["std"]) == pytest.approx(2.0) and dtd_base["n_seeds"] == "3"
    )  # sample std (n - 1)
    assert float(rows[("base2novel", "mma", "eurosat", "16", "novel")]["std"]) == pytest.approx(
        math.sqrt(8), abs=1e-4
    )
    avg = rows[("base2novel", "mma", "Average", "16", "base")]
    assert (
        float(avg["std"]) == pytest.approx(math.sqrt(4.5), abs=1e-4) and avg["seeds"] == "1 2"
    )  # seeds on every dataset
    xd = summary["cross_dataset/imagenet/16"]["mma"]
    assert xd["source"]["mean"] == pytest.approx(71) and xd["average"]["mean"] == pytest.approx(
        66.5
    )
    assert xd["average"]["std"] == pytest.approx(math.sqrt(4.5))
    few = summary["fewshot"]["mma"]
    assert few["dtd"]["1"]["mean"] == pytest.approx(52) and few["dtd"]["16"]["std"] is None
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| mma | 82.00 ± 2.00 | 71.00 ± 1.00 | 76.10 | 3 |" in md
    assert "FAILED `base2novel/mma/eurosat/shots16/seed3`: CUDA out of memory" in md
    assert "missing" in md and "coop, eurosat, 16 shots, seed 2" in md
    assert "MMA (published)" in md and "79.87" in md and "ZjjConan" in md
    assert "Cross-dataset transfer: source imagenet" in md and "Few-shot classification" in md
    assert (tmp_path / "rep" / "base2novel_16shots.png").stat().st_size > 1000
    assert (tmp_path / "rep" / "fewshot.png").stat().st_size > 1000


def _table_under(md: str, heading: str) -> str:
    """The lines of the report from the bold heading of one table to the next heading."""
    start = md.index(f"**{heading}**\n")
    ends = [i for i in (md.find("\n**", start + 1), md.find("\n## ", start + 1)) if i != -1]
    return md[start : min(ends, default=len(md))]


def test_published_rows_are_printed_under_their_dataset_table(runs, tmp_path, monkeypatch):
    # The runs are named dtd and eurosat, as real runs are; dtd is given a published row, eurosat none.
    dtd_row = {"base": 81.50, "novel": 60.25, "hm": 69.28, "source": "a paper, Table 9 (test row)"}
    monkeypatch.setitem(REFERENCES, ("base2novel", "dtd"), {"SomeMethod": dtd_row})
    assert main(["report", str(runs), "--out", str(tmp_path / "rep"), "--references"]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    dtd, eurosat, average = (_table_under(md, h) for h in ("dtd", "eurosat", "Average"))
    assert (
        "| *SomeMethod (published)* | 81.50 | 60.25 | 69.28 | a paper, Table 9 (test row) |" in dtd
    )
    assert "(published)" not in eurosat and "SomeMethod" not in average
    assert "*MMA (published)* | 83.20 | 76.80 | 79.87" in average and "MMA (published)" not in dtd
    # Without --references no published row is printed anywhere; CSV and JSON never carry them.
    assert main(["report", str(runs), "--out", str(tmp_path / "plain")]) == 0
    assert "(published)" not in (tmp_path / "plain" / "report.md").read_text()
    assert "SomeMethod" not in (tmp_path / "rep" / "report.csv").read_text()
    assert "SomeMethod" not in (tmp_path / "rep" / "report.json").read_text()


def test_report_on_a_folder_without_runs_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no runs under" in err[0] and "empty" in err[0]
    assert list((tmp_path / "empty").iterdir()) == [tmp_path / "empty" / "sub"]  # nothing written


# ---- rows defined by settings (issue 24, item 3) -----------------------------------------------
def _b2n_with_config(root, seed, lr, rel=None, base=80.0, novel=70.0):
    folder = root / (rel or f"base2novel/coop/dtd/shots16/seed{seed}")
    _b2n(root, "coop", "dtd", seed, base, novel) if rel is None else _run(
        root,
        rel,
        protocol="base2novel",
        method="coop",
        dataset="dtd",
        shots=16,
        seed=seed,
        base=base,
        novel=novel,
        hm=2 * base * novel / (base + novel),
    )
    (folder / "config.yaml").write_text(
        f"protocol: base2novel\ndataset: dtd\ndata_root: /d\nshots: 16\nseed: {seed}\n"
        f"backbone: clipadapt-tiny\npretrained: none\npreset: p\nmethod: coop\n"
        f"n_ctx: 4\nlr: {lr}\nepochs: 5\nworkers: {seed}\n"
    )


def test_seeds_with_another_lr_are_a_row_of_their_own_and_the_table_says_lr_varies(tmp_path):
    root = tmp_path / "sw"
    for seed in (1, 2):
        _b2n_with_config(root, seed, 0.002)
    _b2n_with_config(
        root, 3, 0.05, base=20.0, novel=10.0
    )  # one seed trained with another lr into the sweep
    text = (
        main(["report", str(root), "--out", str(tmp_path / "rep")])
        or (tmp_path / "rep" / "report.md").read_text()
    )
    summary = json.loads((tmp_path / "rep" / "report.json").read_text())["base2novel/16"]
    assert set(summary) == {"coop (lr=0.002)", "coop (lr=0.05)"}  # never one mean over both
    assert (
        summary["coop (lr=0.002)"]["dtd"]["base"] == pytest.approx(80)
        and summary["coop (lr=0.002)"]["dtd"]["n"] == 2
    )
    assert summary["coop (lr=0.05)"]["dtd"]["base"] == pytest.approx(20)
    assert (
        "Settings that vary between the rows: lr (coop (lr=0.002): 0.002; coop (lr=0.05): 0.05)."
        in text
    )
    assert "workers" not in text  # what does not change the numbers splits nothing
    from clipadapt.report import base2novel_summary

    compact = base2novel_summary(
        str(root)
    ).splitlines()  # the demo's printed table splits the same rows
    assert [line.split()[:2] for line in compact[2:]] == [
        ["coop", "(lr=0.002)"],
        ["coop", "(lr=0.05)"],
    ]


def test_equal_settings_say_none_and_older_runs_without_config_still_report(tmp_path):
    root = tmp_path / "sw"
    for seed in (1, 2):
        _b2n_with_config(root, seed, 0.002)
    text = (
        main(["report", str(root), "--out", str(tmp_path / "rep")])
        or (tmp_path / "rep" / "report.md").read_text()
    )
    assert "| coop |" in text and "Settings that vary between the rows: none." in text
    old = tmp_path / "old"
    _b2n(old, "coop", "dtd", 1, 80, 70)  # an older run: metrics.json only, no config.yaml
    _b2n_with_config(old, 2, 0.002)
    text = (
        main(["report", str(old), "--out", str(tmp_path / "rep2")])
        or (tmp_path / "rep2" / "report.md").read_text()
    )
    summary = json.loads((tmp_path / "rep2" / "report.json").read_text())["base2novel/16"]
    assert (
        "coop (backbone=?, epochs=?, lr=?, n_ctx=?, pretrained=?)" in summary
    )  # unknown, never averaged in
    assert len(summary) == 2


def test_methods_own_settings_are_not_listed_but_a_different_backbone_is(tmp_path):
    root = tmp_path / "sw"
    for method, lr, backbone in (
        ("coop", 0.002, "clipadapt-tiny"),
        ("mma", 0.01, "clipadapt-tiny"),
        ("maple", 0.02, "ViT-B-16"),
    ):
        folder = root / f"base2novel/{method}/dtd/shots16/seed1"
        _b2n(root, method, "dtd", 1, 80.0, 70.0)
        (folder / "config.yaml").write_text(
            f"protocol: base2novel\ndataset: dtd\nshots: 16\nseed: 1\n"
            f"method: {method}\nbackbone: {backbone}\nlr: {lr}\n"
        )
    text = (
        main(["report", str(root), "--out", str(tmp_path / "rep")])
        or (tmp_path / "rep" / "report.md").read_text()
    )
    # each method's own lr is its preset; the backbone differing between methods makes the rows incomparable
    assert (
        "Settings that vary between the rows: backbone (coop: clipadapt-tiny; maple: ViT-B-16; "
        "mma: clipadapt-tiny)." in text
    )
    assert "lr (" not in text


def test_metrics_with_counts_report_as_before(tmp_path):
    root = tmp_path / "sw"
    for seed in (1, 2):
        _run(
            root,
            f"f/seed{seed}",
            protocol="cross_dataset",
            method="mma",
            dataset="imagenet",
            shots=16,
            seed=seed,
            source=70.0,
            dtd=40.0,
            target_average=40.0,  # no 'targets': read from the keys, as older runs
            scored={"source": {"images": 10, "classes": 5}, "dtd": {"images": 8, "classes": 4}},
        )
    assert main(["report", str(root), "--out", str(tmp_path / "rep")]) == 0
    summary = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert set(summary["cross_dataset/imagenet/16"]["mma"]) == {"source", "dtd", "average"}
