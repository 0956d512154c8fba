"""The seeds' studies as sweep files: each reads, runs end to end on the synthetic world, and reports a row per variant."""

import glob
import json
import os

import pytest
import yaml

from clipadapt.cli import main
from clipadapt.sweep import read_sweep

STUDIES = os.path.join(os.path.dirname(__file__), "..", "configs", "sweeps", "studies")
REAL = sorted(
    p
    for p in glob.glob(os.path.join(STUDIES, "*.yaml"))
    if not os.path.basename(p).startswith("synthetic_")
)
SYNTHETIC = sorted(glob.glob(os.path.join(STUDIES, "synthetic_*.yaml")))


def _load(path):
    with open(path) as f:
        return yaml.safe_load(f)


def test_every_study_has_a_synthetic_twin_with_the_same_variants():
    assert len(REAL) >= 8 and len(SYNTHETIC) == len(REAL)
    for path in REAL:
        twin = os.path.join(STUDIES, "synthetic_" + os.path.basename(path))
        real, synthetic = _load(path), _load(twin)
        assert (
            synthetic["variants"] == real["variants"]
            and synthetic["reference"] == real["reference"]
        ), path
        assert synthetic["backbone"] == "synthetic" and real["backbone"] == "ViT-B-16"
        with open(path) as f:
            header = f.readline()
        assert header.startswith("#") and "seed" in header  # names the paper the study comes from


@pytest.mark.parametrize("path", REAL + SYNTHETIC, ids=os.path.basename)
def test_every_study_file_reads_into_one_run_per_variant_dataset_seed_and_shots(path):
    data = _load(path)
    sweep = read_sweep(path)
    expected = (
        len(data["variants"]) * len(data["datasets"]) * len(data["seeds"]) * len(data["shots"])
    )
    assert len(sweep.runs) == expected
    assert {r.variant for r in sweep.runs} == set(data["variants"])
    assert len({r.dir for r in sweep.runs}) == expected  # every run has a folder of its own
    assert all(
        r.dir.startswith(f"base2novel/{os.path.basename(path)[:-5]}/{r.variant}/")
        for r in sweep.runs
    )


def test_the_papers_tables_are_cited_with_their_numbers():
    table4 = _load(os.path.join(STUDIES, "rmadapter_table4.yaml"))
    assert (
        table4["paper"]["rmadapter"]["hm"] == 80.62
        and table4["paper"]["constraints+rec_text"]["hm"] == 80.51
    )
    assert _load(os.path.join(STUDIES, "rmadapter_table5.yaml"))["paper"]["share_up"]["hm"] == 80.30
    ablation = _load(os.path.join(STUDIES, "rmma_ablation.yaml"))
    assert ablation["paper"]["no_mar"] == {"base": 83.04, "novel": 75.80, "hm": 79.25}
    ratio = _load(os.path.join(STUDIES, "mma_attn_base_ratio.yaml"))
    assert ratio["datasets"] == ["fgvc_aircraft", "caltech101", "oxford_flowers", "oxford_pets"]
    assert {v["base_ratio"] for v in ratio["variants"].values()} == {"1:1", "3:1", "4:1", "5:1"}


def _tiny_copy(path, tmp_path, datasets=None):
    """The study at a tiny scale: the tiny random-weight CLIP (32-pixel images), one dataset, one seed, 2 shots
    (a study of shots: 2 and 32), one epoch; its variants and presets unchanged."""
    data = _load(path)
    data["backbone"], data["pretrained"] = "clipadapt-tiny", "none"
    data["datasets"] = datasets or data["datasets"][:1]
    data["seeds"] = [1]
    data["shots"] = [2, 32] if len(data["shots"]) > 1 else [2]
    data["method_overrides"] = {
        m: {"epochs": 1, **({"patience": 0} if "patience" in o else {})}
        for m, o in (data.get("method_overrides") or {}).items()
    }
    copy = tmp_path / os.path.basename(path)
    copy.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(copy), data


def _run_and_report(path, tmp_path, data_root, datasets=None, variants=None):
    copy, data = _tiny_copy(path, tmp_path, datasets)
    out = tmp_path / "out"
    some = ["--variants", ",".join(variants)] if variants else []
    assert main(["sweep", copy, "--out", str(out), "--data-root", data_root, *some]) == 0
    assert main(["report", str(out)]) == 0
    return out, data


def _study_rows(report_md: str) -> list[str]:
    rows, inside = [], False
    for line in report_md.splitlines():
        if line.startswith("## Study:"):
            inside = True
        elif line.startswith("## "):
            inside = False
        elif (
            inside
            and line.startswith("| ")
            and not line.startswith("| variant")
            and not line.startswith("| ---")
        ):
            rows.append(line)
    return rows


@pytest.mark.learning
def test_rmma_ablation_study_end_to_end_on_the_synthetic_world(tmp_path, capsys):
    chosen = ["no_mar", "no_fusion", "no_recurrence", "rmma"]  # the other variants: under -m slow
    out, data = _run_and_report(
        os.path.join(STUDIES, "synthetic_rmma_ablation.yaml"),
        tmp_path,
        str(tmp_path / "data"),
        variants=chosen,
    )
    text = (out / "report.md").read_text()
    rows = _study_rows(text)
    assert [r.split("|")[1].strip() for r in rows] == [
        "no_mar",
        "no_fusion",
        "no_recurrence",
        "◆ **rmma**",
    ]
    assert "fusion=False" in rows[1] and "routing=shared" in rows[0]
    params = {r.split("|")[1].strip(): int(r.split("|")[8].strip().replace(",", "")) for r in rows}
    assert params["no_recurrence"] - 64 == 4 * (
        params["◆ **rmma**"] - 64
    )  # one adapter per block (4 blocks)
    summary = json.loads((out / "report.json").read_text())["study/synthetic_rmma_ablation"]["2"]
    assert set(summary) == set(chosen) and all(v["n"] == 1 for v in summary.values())
    metrics = json.loads(
        (
            out
            / "base2novel/synthetic_rmma_ablation/no_fusion/syn_shapes/shots2/seed1/metrics.json"
        ).read_text()
    )
    assert (metrics["study"], metrics["variant"], metrics["method"]) == (
        "synthetic_rmma_ablation",
        "no_fusion",
        "rmma",
    )
    assert (
        "## Base-to-novel generalization" not in text
    )  # a study's runs are not mixed into the method tables


@pytest.mark.slow
@pytest.mark.parametrize("path", SYNTHETIC, ids=os.path.basename)
def test_every_synthetic_study_runs_end_to_end_at_a_tiny_scale(path, tmp_path, capsys):
    ratio = "base_ratio" in open(path).read()
    out, data = _run_and_report(
        path, tmp_path, str(tmp_path / "data"), ["syn_patterns"] if ratio else None
    )
    text = (out / "report.md").read_text()
    per_shots = len(data["shots"])
    assert len(_study_rows(text)) == per_shots * len(data["variants"])
    for key in data.get("plot") or []:
        assert glob.glob(str(out / f"study_*_{key}_*shots.png")), key


def test_study_base_ratio_is_recorded_and_plotted(tmp_path, capsys):
    path = os.path.join(STUDIES, "synthetic_mma_attn_base_ratio.yaml")
    data = _load(path)
    data["variants"] = {k: v for k, v in data["variants"].items() if k.startswith("zeroshot")}
    data["reference"] = "zeroshot-1to1"
    source = tmp_path / "src"
    source.mkdir()
    (source / "synthetic_mma_attn_base_ratio.yaml").write_text(
        yaml.safe_dump(data, sort_keys=False)
    )
    out, _ = _run_and_report(
        str(source / "synthetic_mma_attn_base_ratio.yaml"),
        tmp_path,
        str(tmp_path / "data"),
        ["syn_patterns"],
    )
    counts = {}
    for ratio in ("1to1", "3to1", "4to1", "5to1"):
        m = json.loads(
            (
                out
                / f"base2novel/synthetic_mma_attn_base_ratio/zeroshot-{ratio}/syn_patterns/shots2/seed1/"
                "metrics.json"
            ).read_text()
        )
        counts[ratio] = (m["base_ratio"], m["num_base_classes"], m["num_novel_classes"])
    assert counts == {
        "1to1": ("1:1", 6, 6),
        "3to1": ("3:1", 9, 3),
        "4to1": ("4:1", 10, 2),
        "5to1": ("5:1", 10, 2),
    }
    assert (out / "study_synthetic_mma_attn_base_ratio_base_ratio_2shots.png").exists()
    assert "base_ratio=4:1" in (out / "report.md").read_text()


# ---- bad input -----------------------------------------------------------------------------------

STUDY = """
protocol: base2novel
datasets: [syn_shapes]
seeds: [1]
shots: [2]
backbone: synthetic
variants:
  full: {method: rmma}
  no_fusion: {method: rmma, fusion: false}
reference: full
"""


@pytest.mark.parametrize(
    "change, fragment",
    [
        (("reference: full", "reference: fusion"), "unknown variant 'fusion'"),
        (("{method: rmma}", "{method: rmma2}"), "variant 'full' names unknown method 'rmma2'"),
        (("fusion: false", "fusion: maybe"), "variant 'no_fusion' (method 'rmma')"),
        (("fusion: false}", "fusion: false, base_ratio: '0:1'}"), "base_ratio"),
        (("  no_fusion:", "  no fusion/:"), "must be a folder name"),
        (("variants:", "methods: [rmma]\nvariants:"), "not 'methods'"),
    ],
)
def test_bad_study_files_fail_with_one_line_and_exit_2(tmp_path, capsys, change, fragment):
    path = tmp_path / "study.yaml"
    path.write_text(STUDY.replace(*change))
    assert (
        main(["sweep", str(path), "--out", str(tmp_path / "out"), "--data-root", str(tmp_path)])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert not (tmp_path / "out").exists()


def test_unknown_variant_on_the_command_line_is_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_text(STUDY)
    assert (
        main(
            [
                "sweep",
                str(path),
                "--out",
                str(tmp_path / "out"),
                "--variants",
                "full,nofusion",
                "--dry-run",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown variant 'nofusion' (did you mean 'no_fusion'?)" in err[0]
    assert (
        main(
            [
                "sweep",
                str(path),
                "--out",
                str(tmp_path / "out"),
                "--variants",
                "no_fusion",
                "--dry-run",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out.strip().splitlines()
    assert (
        len(printed) == 1 and "--variant no_fusion" in printed[0] and "fusion=false" in printed[0]
    )


def test_main_tables_keep_runs_off_the_standard_data_apart(tmp_path):
    from clipadapt.report import find_runs, render

    def write(folder, **extra):
        path = tmp_path / folder
        path.mkdir(parents=True)
        metrics = {
            "protocol": "base2novel",
            "method": "mma",
            "dataset": "dtd",
            "shots": 16,
            "seed": 1,
            "base": 80.0,
            "novel": 70.0,
            "hm": 74.67,
            "trainable_params": 1000,
            "train_ms_per_image": 2.0,
            **extra,
        }
        (path / "metrics.json").write_text(json.dumps(metrics))

    write("a")
    write("b", base_ratio="4:1", base=90.0)
    write("c", train_noise_std=0.3, base=60.0)
    text, _, summary = render(find_runs(str(tmp_path)))
    rows = summary["base2novel/16"]
    assert rows["mma"]["dtd"]["base"] == 80.0 and rows["mma (base:new 4:1)"]["dtd"]["base"] == 90.0
    assert rows["mma (train noise σ 0.3)"]["dtd"]["base"] == 60.0
    assert "## Cost: base2novel (16 shots)" in text and "| mma | 1,000 | — | 2.00 |" in text
