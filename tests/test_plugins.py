"""Methods written outside clipadapt: named by class path (`module:Class`) or registered by an installed
package's entry point (group `clipadapt.methods`), with their presets beside their module. They train,
evaluate, sweep (child processes too), export with their paper and load as the built-ins do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from clipadapt import registry
from clipadapt.cli import main
from clipadapt.errors import ClipadaptError
from clipadapt.methods import forget_methods, method_class

TINY = ["--backbone", "clipadapt-tiny", "--pretrained", "none"]
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")

# A method as an outside author writes it: public imports only, everything about it on its class.
METHOD_SOURCE = '''
from dataclasses import dataclass

import torch
from torch import nn

from clipadapt import Backbone, Method, MethodConfig, Paper
from clipadapt.validation import Range


@dataclass
class ResidualConfig(MethodConfig):
    option_ranges = {"gain": Range(ge=0)}

    gain: float = 1.0


class Residual(Method):
    """A learned residual added to the image features."""

    name = "NAME"
    paper = Paper("A Residual for Testing Plugins", "Tests 2026", "https://example.org/residual")
    Config = ResidualConfig
    output_only = True
    training_defaults = {"optimizer": "adamw", "lr": 0.01, "epochs": 3, "batch_size": 4}

    def __init__(self, config: ResidualConfig, backbone: Backbone, classnames):
        super().__init__(config, backbone, classnames)
        self.residual = nn.Parameter(torch.zeros(backbone.embed_dim))

    def after_heads(self, backbone, img_f, txt_f):
        if img_f is not None:
            img_f = img_f + self.config.gain * self.residual.to(img_f.dtype)
        return img_f, txt_f
'''
PRESET = {"epochs": 1, "batch_size": 4, "augment": False, "gain": 0.25}


def _write_method(folder, module: str, name: str) -> None:
    """`folder/<module>.py` defining method `name` (class Residual), and its presets beside it."""
    path = folder.joinpath(*module.split("."))
    if "." in module:
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").write_text("")
        presets = path.parent / "presets"
    else:
        folder.mkdir(parents=True, exist_ok=True)
        presets = folder / "presets"
    path.with_suffix(".py").write_text(METHOD_SOURCE.replace("NAME", name))
    (presets / "synthetic").mkdir(parents=True, exist_ok=True)
    (presets / f"{name}_fewshot.yaml").write_text(yaml.safe_dump(PRESET))
    (presets / "synthetic" / f"{name}.yaml").write_text(yaml.safe_dump({**PRESET, "gain": 0.5}))


@pytest.fixture()
def clean_registry():
    """Every test starts and ends with what is installed now, and without the modules it wrote."""
    before = set(sys.modules)
    forget_methods()
    yield
    for module in set(sys.modules) - before:
        if module.startswith(("plugmod", "plugpkg")):
            del sys.modules[module]
    forget_methods()


@pytest.fixture()
def by_path(tmp_path, monkeypatch, clean_registry):
    """A method in a module file (`plugmod_<test>.py`) on the import path, as a file in the working folder."""
    module = f"plugmod_{abs(hash(str(tmp_path))) % 10**8}"
    _write_method(tmp_path / "code", module, "plug_residual")
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    return f"{module}:Residual"


@pytest.fixture()
def installed(tmp_path, monkeypatch, clean_registry):
    """An installed package `plugpkg` registering `plug_ep` by entry point (a dist-info folder on the path)."""
    site = tmp_path / "site"
    _write_method(site, "plugpkg.method", "plug_ep")
    info = site / "plugpkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugpkg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[clipadapt.methods]\nplug_ep = plugpkg.method:Residual\n"
    )
    monkeypatch.syspath_prepend(str(site))
    forget_methods()
    return site


def _train(root, out, method, *extra):
    return main(
        [
            "train",
            "--method",
            method,
            "--dataset",
            "caltech101",
            "--data-root",
            root,
            "--out",
            str(out),
            "--protocol",
            "fewshot",
            "--shots",
            "2",
            *TINY,
            *extra,
        ]
    )


def test_a_method_named_by_class_path_trains_evaluates_exports_and_says_when_it_is_gone(
    fake_root, tmp_path, by_path, capsys, monkeypatch
):
    run = tmp_path / "run"
    assert _train(fake_root, run, by_path) == 0
    record = yaml.safe_load((run / "config.yaml").read_text())
    # found by its own name; its preset found beside its module, without --config
    assert record["method"] == "plug_residual"
    assert record["preset"] == "preset:plug_residual_fewshot.yaml" and record["gain"] == 0.25
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "plug_residual" and metrics["trainable_params"] == 32
    from clipadapt.adapters import read_adapter

    meta, _ = read_adapter(str(run / "adapter.safetensors"))
    assert meta["method_source"] == by_path and meta["method_package"] == ""
    # the same command resumes (here: finds the run finished) and eval reads the adapter back
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(run / "adapter.safetensors"),
                "--dataset",
                "caltech101",
                "--data-root",
                fake_root,
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["method"] == "plug_residual"
    assert evaluated["accuracy"] == metrics["accuracy"]
    # exported: the model card names its paper, and its command names the class path clipadapt accepts
    assert main(["export", str(run), "--out", str(tmp_path / "export")]) == 0
    card = (tmp_path / "export" / "README.md").read_text()
    assert "A Residual for Testing Plugins (Tests 2026)" in card
    assert "https://example.org/residual" in card and f"--method {by_path}" in card
    # the module gone: one line naming it
    module = by_path.partition(":")[0]
    monkeypatch.setattr(sys, "path", [p for p in sys.path if not p.endswith("code")])
    del sys.modules[module]
    forget_methods()
    capsys.readouterr()
    code = main(
        [
            "eval",
            "--checkpoint",
            str(run / "adapter.safetensors"),
            "--dataset",
            "caltech101",
            "--data-root",
            fake_root,
            "--out",
            str(tmp_path / "eval2"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"'{module}'" in err[0], err


def test_a_class_path_option_out_of_its_declared_range_is_refused(by_path):
    from clipadapt.methods import make_config

    assert make_config(by_path, {"gain": 2.0}).gain == 2.0
    with pytest.raises(ClipadaptError, match="gain"):
        make_config(by_path, {"gain": -1})


def test_an_installed_package_registers_its_method_by_entry_point(
    fake_root, tmp_path, installed, capsys, monkeypatch
):
    assert "plug_ep" in registry.plugin_method_names()  # beside any plugin installed here
    assert registry.builtin_method_names()[:3] == ("zeroshot", "clip_adapter", "coop")
    assert "plug_ep (plugpkg)" in registry.describe_methods()
    assert method_class("plug_ep").__module__ == "plugpkg.method"
    # its presets, beside its module in its own package
    from clipadapt.runconfig import find_preset, load_preset

    assert find_preset("plug_ep", "base2novel", "synthetic") == "synthetic/plug_ep.yaml"
    assert load_preset("synthetic/plug_ep.yaml", "plug_ep")["gain"] == 0.5
    # listed beside the built-ins in an unknown-method error
    assert main(["info", "--method", "nothing_like_it", *TINY[:2]]) == 2
    assert "plug_ep (plugpkg)" in capsys.readouterr().err
    assert main(["info", "--method", "plug_ep", "--backbone", "clipadapt-tiny", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trainable_params"] == 32
    run = tmp_path / "run"
    assert _train(fake_root, run, "plug_ep") == 0
    from clipadapt.adapters import read_adapter
    from clipadapt.model import load_model

    meta, _ = read_adapter(str(run / "adapter.safetensors"))
    assert (meta["method_source"], meta["method_package"]) == ("plugpkg.method:Residual", "plugpkg")
    assert load_model(str(run / "adapter.safetensors")).method.name == "plug_ep"
    # uninstalled: loading its adapter is one line naming the package
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(installed)])
    for module in [m for m in sys.modules if m.startswith("plugpkg")]:
        del sys.modules[module]
    forget_methods()
    assert "plug_ep" not in registry.method_names()
    with pytest.raises(ClipadaptError, match="from package 'plugpkg', which is not installed"):
        load_model(str(run / "adapter.safetensors"))


def test_help_lists_installed_plugins_and_imports_no_torch(installed):
    code = (
        "import sys\n"
        "from clipadapt.cli import main\n"
        "for argv in (['--help'], ['train', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, str(installed)])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("NO-TORCH"), out.stdout[-300:]
    text = " ".join(out.stdout.split())  # argparse wraps the help's lines
    assert "installed plugins: plug_ep (plugpkg)" in text and "mma_pp" in text


@pytest.mark.cli  # the sweep's children: fresh processes importing torch
def test_a_sweep_runs_a_class_path_method_in_child_processes(fake_root, tmp_path, by_path, capsys):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        textwrap.dedent(
            f"""
            protocol: fewshot
            methods: ["{by_path}", zeroshot]
            datasets: [caltech101]
            seeds: [1]
            shots: [2]
            backbone: clipadapt-tiny
            pretrained: none
            presets: {{zeroshot: none}}
            """
        )
    )
    out = tmp_path / "out"
    # the dry run prints commands plain clipadapt accepts: the class path, not the bare name
    assert (
        main(["sweep", str(sweep), "--out", str(out), "--data-root", fake_root, "--dry-run"]) == 0
    )
    assert f"--method {by_path}" in capsys.readouterr().out
    assert (
        main(["sweep", str(sweep), "--out", str(out), "--data-root", fake_root, "--jobs", "2"]) == 0
    )
    assert "2 finished now, 0 failed" in capsys.readouterr().out
    record = yaml.safe_load(
        (out / "fewshot/plug_residual/caltech101/shots2/seed1/config.yaml").read_text()
    )
    assert record["method"] == "plug_residual" and record["gain"] == 0.25
    # the rerun check reads the finished run as unchanged
    assert main(["sweep", str(sweep), "--out", str(out), "--data-root", fake_root]) == 0
    assert "2 already finished" in capsys.readouterr().out


def test_children_find_the_folders_of_class_path_methods(by_path):
    method_class(by_path)
    env = registry.import_path_for_children({"PYTHONPATH": "/somewhere"})
    folders = env["PYTHONPATH"].split(os.pathsep)
    assert folders[0] == "/somewhere" and any(f.endswith("code") for f in folders[1:])
    assert registry.method_argument("plug_residual") == by_path
    assert registry.method_argument("mma") == "mma"
