"""The library is the product and the command line a client of it: the run API gives what `clipadapt
train` gives, the layers import downwards only, and the shipped sweeps are reachable by name."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

import clipadapt
from clipadapt.cli import main
from clipadapt.errors import ClipadaptError

SRC = Path(__file__).resolve().parents[1] / "src" / "clipadapt"
TIMING = (
    "seconds",
    "per_s",
    "peak_memory",
    "ms_per_image",
)  # keys that measure the machine, not the run


def _measured(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not any(t in k for t in TIMING)}


def _losses(path: Path) -> list:
    return [
        {
            k: v
            for k, v in json.loads(line).items()
            if "time" not in k and "per_s" not in k and "seconds" not in k
        }
        for line in path.read_text().splitlines()
    ]


def test_the_run_api_and_the_cli_give_the_same_run(learn_root, tmp_path, capsys):
    settings = {"epochs": 2, "augment": False, "scale": 0.1, "lr": 0.01}
    api = clipadapt.train(
        "mma",
        "eurosat",
        learn_root,
        str(tmp_path / "api"),
        protocol="base2novel",
        shots=4,
        seed=2,
        backbone="clipadapt-tiny",
        pretrained="none",
        config="none",
        **settings,
    )
    assert (
        main(
            [
                "train",
                "--method",
                "mma",
                "--dataset",
                "eurosat",
                "--data-root",
                learn_root,
                "--out",
                str(tmp_path / "cli"),
                "--protocol",
                "base2novel",
                "--shots",
                "4",
                "--seed",
                "2",
                "--backbone",
                "clipadapt-tiny",
                "--pretrained",
                "none",
                "--config",
                "none",
                *(f"{k}={v}" for k, v in settings.items()),
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert _measured(api) == _measured(cli) and {
        printed[k] == api[k] for k in ("base", "novel", "hm")
    } == {True}
    assert (
        json.loads((tmp_path / "api" / "metrics.json").read_text()) == api
    )  # what it returns is what it wrote
    assert (tmp_path / "api" / "config.yaml").read_text() == (
        tmp_path / "cli" / "config.yaml"
    ).read_text()
    a, b = (
        load_file(tmp_path / "api" / "adapter.safetensors"),
        load_file(tmp_path / "cli" / "adapter.safetensors"),
    )
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert _losses(tmp_path / "api" / "log.jsonl") == _losses(tmp_path / "cli" / "log.jsonl")


def test_the_run_api_refuses_a_finished_run_and_a_typo_in_a_setting(learn_root, tmp_path):
    common = dict(
        protocol="fewshot", shots=2, backbone="clipadapt-tiny", pretrained="none", config="none"
    )
    clipadapt.train("zeroshot", "eurosat", learn_root, str(tmp_path / "z"), **common)
    before = (tmp_path / "z" / "metrics.json").read_text()
    with pytest.raises(ClipadaptError, match="already holds a finished run"):
        clipadapt.train("zeroshot", "eurosat", learn_root, str(tmp_path / "z"), **common)
    assert (tmp_path / "z" / "metrics.json").read_text() == before
    with pytest.raises(ClipadaptError, match="unknown setting"):
        clipadapt.train("mma", "eurosat", learn_root, str(tmp_path / "m"), epoch=1, **common)
    assert not (tmp_path / "m").exists()  # refused before anything was written


def _import_graph() -> dict[str, set[str]]:
    from test_settings import _library_imports

    return _library_imports()


def test_the_package_has_no_import_circle_and_nothing_imports_the_command_line():
    graph = _import_graph()
    for module, targets in graph.items():
        if module not in ("clipadapt.cli", "clipadapt.cli_args", "clipadapt.__main__"):
            assert not targets & {"clipadapt.cli", "clipadapt.cli_args"}, module
    state = {}  # depth-first search for a back edge: 1 on the path, 2 done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join([*path, node, nxt]))
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_quiet_and_verbose_do_what_they_say(learn_root, tmp_path, capsys):
    base = [
        "eval",
        "--dataset",
        "eurosat",
        "--data-root",
        learn_root,
        "--subsample",
        "new",
        "--workers",
        "0",
        "--backbone",
        "clipadapt-tiny",
        "--pretrained",
        "none",
    ]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    normal = capsys.readouterr()
    assert "wrote" in normal.err and json.loads(normal.out)["num_images"] > 0
    assert main(["-q", *base, "--out", str(tmp_path / "b")]) == 0
    quiet = capsys.readouterr()
    assert (
        quiet.err == "" and quiet.out == normal.out
    )  # results only: no status line, no progress bar
    assert main(["-v", *base, "--out", str(tmp_path / "c")]) == 0
    assert "wrote" in capsys.readouterr().err
    assert logging.getLogger().level == logging.INFO  # -v opens the other libraries' messages
    main(
        ["-q", *base, "--out", str(tmp_path / "a")]
    )  # refused (finished run): the error line stays
    assert "clipadapt: error:" in capsys.readouterr().err


def test_library_calls_print_nothing(learn_root, tmp_path, capsys):
    clipadapt.evaluate(
        "eurosat",
        learn_root,
        str(tmp_path / "e"),
        subsample="new",
        backbone="clipadapt-tiny",
        pretrained="none",
        workers=0,
        progress=False,
    )
    assert capsys.readouterr() == (
        "",
        "",
    )  # status lines go to the clipadapt loggers, which the caller configures


def test_shipped_sweeps_are_package_data_and_run_by_name(tmp_path, capsys):
    from clipadapt.sweep import locate_sweep_file, shipped_sweeps

    names = set(shipped_sweeps())
    assert {
        "base2novel",
        "cross_dataset",
        "domain_generalization",
        "fewshot",
        "synthetic_base2novel",
        "studies/rmma_ablation",
        "studies/synthetic_rmma_ablation",
    } <= names
    assert all(path.is_relative_to(SRC) for path in shipped_sweeps().values())  # inside the package
    assert (
        locate_sweep_file("base2novel")
        == locate_sweep_file("base2novel.yaml")
        == str(SRC / "sweeps/base2novel.yaml")
    )
    assert locate_sweep_file("rmma_ablation").endswith("sweeps/studies/rmma_ablation.yaml")
    checkout = Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "base2novel.yaml"
    assert (
        checkout.read_text() == (SRC / "sweeps" / "base2novel.yaml").read_text()
    )  # the README's paths work
    assert main(["sweep", "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == len(names) and any(
        line.startswith("studies/rmadapter_table4 ") for line in listed
    )
    assert main(["sweep", "synthetic_base2novel", "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("clipadapt train --method zeroshot")
    assert main(["sweep", "base2novl", "--out", str(tmp_path / "o"), "--dry-run"]) == 2
    assert "did you mean base2novel" in capsys.readouterr().err


def test_pyproject_ships_every_sweep_folder():
    data = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    folders = {p.parent.relative_to(SRC) for p in (SRC / "sweeps").rglob("*.yaml")}
    for folder in folders:
        assert f'"{folder.as_posix()}/*.yaml"' in data, folder


def test_a_sweeps_runs_are_run_api_calls_with_its_settings(tmp_path):
    from clipadapt.sweep import command_line, read_sweep

    sweep = read_sweep(str(SRC / "sweeps" / "synthetic_base2novel.yaml"), {"epochs": 1})
    sweep.feature_cache = False
    run = next(r for r in sweep.runs if r.method == "mma")
    kind, kwargs = sweep.run_call(run, str(tmp_path), "DATA")
    assert (
        kind == "train"
        and kwargs["epochs"] == 1
        and kwargs["method"] == "mma"
        and kwargs["feature_cache"] is False
    )
    assert kwargs["config"].endswith("presets/synthetic/mma.yaml")
    argv = command_line(kind, kwargs)
    assert (
        argv[:3] == ["train", "--method", "mma"]
        and "--no-feature-cache" in argv
        and "epochs=1" in argv
    )


def test_a_sweep_refuses_a_setting_that_is_a_run_argument(tmp_path):
    from clipadapt.sweep import read_sweep

    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "protocol": "base2novel",
                "methods": ["mma"],
                "datasets": ["syn_shapes"],
                "overrides": {"shots": 4},
            }
        )
    )
    with pytest.raises(ClipadaptError, match="'shots' is not a setting"):
        read_sweep(str(path))


@pytest.mark.cli
def test_children_of_a_parallel_sweep_run_the_api_not_the_command_line(tmp_path):
    from clipadapt.sweep import execute_subprocess

    record = {"protocol": "fewshot", "method": "zeroshot", "dataset": "eurosat", "dir": "r"}
    error = execute_subprocess(
        "train",
        {
            "method": "zeroshot",
            "dataset": "eurosat",
            "data_root": str(tmp_path / "no"),
            "out": str(tmp_path / "r"),
            "protocol": "fewshot",
        },
        record,
        str(tmp_path / "r"),
        dict(os.environ),
    )
    failed = json.loads((tmp_path / "r" / "failed.json").read_text())
    assert error == failed["error"] and failed["returncode"] == 2 and str(tmp_path / "no") in error
    assert "Traceback" not in (tmp_path / "r" / "run.log").read_text()


def _official_mmrl(method) -> dict:
    """An MMRL checkpoint in the official code's key names (representation_learner.*, image_encoder.proj_rep)."""
    state = {
        "representation_learner.compound_rep_tokens": method.rep_tokens.detach().clone(),
        "image_encoder.proj_rep": method.proj_rep.detach().clone(),
    }
    for j, (to_image, to_text) in enumerate(
        zip(method.rep_to_image, method.rep_to_text, strict=True)
    ):
        for name in ("weight", "bias"):
            state[f"representation_learner.compound_rep_tokens_r2vproj.{j}.{name}"] = getattr(
                to_image, name
            ).detach()
            state[f"representation_learner.compound_rep_tokens_r2tproj.{j}.{name}"] = getattr(
                to_text, name
            ).detach()
    return state


@pytest.mark.parametrize("method", ["mma", "mmrl"])
def test_every_importer_writes_the_file_a_trained_run_writes(method, tmp_path):
    import torch

    from clipadapt.adapters import import_official, read_adapter
    from clipadapt.model import build_model, load_model

    # What an official file says: its blocks (an importer reads them off the keys), not "the default range".
    options = {
        "mma": {"scale": 0.1, "adapter_start": 2, "adapter_end": 4},
        "mmrl": {"rep_layers": [2, 3, 4]},
    }[method]
    source = build_model(method, ["a", "b"], backbone="synthetic", pretrained="shipped", **options)
    state = source.method.state_dict() if method == "mma" else _official_mmrl(source.method)
    torch.save({"state_dict": state}, tmp_path / "official.pth.tar")
    reader = {"mma": {"scale": 0.1}, "mmrl": {"last_block": 4, "classnames": ["a", "b"]}}[method]
    import_official(
        method,
        str(tmp_path / "official.pth.tar"),
        str(tmp_path / "imported.safetensors"),
        "synthetic",
        "shipped",
        **reader,
    )
    source.save_adapter(str(tmp_path / "trained.safetensors"))
    imported, trained = (
        read_adapter(str(tmp_path / "imported.safetensors")),
        read_adapter(str(tmp_path / "trained.safetensors")),
    )
    same = (
        "format",
        "method",
        "method_config",
        "backbone_identity",
        "backbone",
        "pretrained",
        *(("classnames",) if method == "mmrl" else ()),
    )  # official MMA files name no classes
    assert {k: imported[0][k] for k in same} == {k: trained[0][k] for k in same}
    assert imported[0]["imported_from"].endswith("official.pth.tar")
    assert all(torch.equal(imported[1][k], trained[1][k].float()) for k in trained[1])
    images = torch.randn(2, 3, source.backbone.image_size, source.backbone.image_size)
    with torch.no_grad():
        torch.testing.assert_close(
            load_model(str(tmp_path / "imported.safetensors"), ["a", "b"]).eval()(images),
            source.eval()(images),
        )
    if method == "mma":
        with pytest.raises(ClipadaptError, match="records no class names"):
            load_model(str(tmp_path / "imported.safetensors"))


@pytest.mark.cli
def test_loading_the_shipped_backbone_leaves_the_root_logger_alone():
    # In a fresh process: under pytest the root logger already has handlers, which would hide a
    # logging.basicConfig() done on the way (open_clip's factory does one on its first message).
    # open_clip's model registry is left alone too until a name has to be resolved.
    code = (
        "import logging, open_clip; from clipadapt.backbone import load_backbone; "
        "load_backbone('synthetic', 'shipped'); load_backbone('synthetic', 'none'); "
        "root = logging.getLogger(); print(root.handlers, root.level, 'clipadapt-tiny' in open_clip.list_models())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == f"[] {logging.WARNING} False" and done.stderr == ""


@pytest.mark.cli
def test_status_lines_print_once_when_open_clip_configured_the_root_logger(learn_root, tmp_path):
    # A fresh process: open_clip's factory (a random-weight open_clip model) gives the root logger a
    # handler, which must not print clipadapt's lines a second time. Under pytest that cannot show.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "clipadapt",
            "eval",
            "--dataset",
            "eurosat",
            "--data-root",
            learn_root,
            "--subsample",
            "new",
            "--backbone",
            "clipadapt-tiny",
            "--pretrained",
            "none",
            "--workers",
            "0",
            "--out",
            str(tmp_path / "e"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("wrote") == 1 and "INFO" not in done.stderr, done.stderr
