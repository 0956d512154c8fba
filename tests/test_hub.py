"""Export a finished run as a Hub-ready folder, and load an adapter from a folder or a Hub id (offline cache)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

import clipadapt
from clipadapt.cli import main
from clipadapt.errors import ClipadaptError

SETTINGS = {"epochs": 1, "augment": False, "scale": 0.1, "lr": 0.01}


@pytest.fixture(scope="module")
def finished_run(learn_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "mma"
    clipadapt.train(
        "mma",
        "eurosat",
        learn_root,
        str(out),
        protocol="base2novel",
        shots=2,
        seed=3,
        backbone="clipadapt-tiny",
        pretrained="none",
        config="none",
        progress=False,
        **SETTINGS,
    )
    return out


def _logits(checkpoint: str) -> torch.Tensor:
    model = clipadapt.load_model(checkpoint).eval()
    torch.manual_seed(0)
    images = torch.randn(2, 3, model.backbone.image_size, model.backbone.image_size)
    with torch.no_grad():
        return model(images)


def _fill_hub_cache(hf_home, repo_id: str, folder) -> None:
    """Lay a repository out as huggingface_hub's cache does: blobs, snapshots/<revision>/, refs/main."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for i, path in enumerate(sorted(folder.iterdir())):
        blob = repo / "blobs" / f"{i:040x}"
        shutil.copyfile(path, blob)
        (snapshot / path.name).symlink_to(f"../../blobs/{blob.name}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


def _offline_hub(monkeypatch, hf_home) -> None:
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads both once, when imported (open_clip imported it already).
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_an_export_holds_the_adapter_its_config_and_a_model_card(finished_run, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", str(finished_run), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "adapter.safetensors",
        "config.json",
    ]
    assert (out / "adapter.safetensors").read_bytes() == (
        finished_run / "adapter.safetensors"
    ).read_bytes()
    config = json.loads((out / "config.json").read_text())
    record = yaml.safe_load((finished_run / "config.yaml").read_text())
    meta, _ = clipadapt.adapters.read_adapter(str(finished_run / "adapter.safetensors"))
    assert config["method"] == "mma" and config["method_config"] == json.loads(
        meta["method_config"]
    )
    assert (
        config["backbone_identity"] == meta["backbone_identity"]
        and config["backbone"] == "clipadapt-tiny"
    )
    assert config["run"] == {
        k: v for k, v in record.items() if k != "data_root"
    }  # no local path leaves the machine
    assert config["metrics"] == json.loads((finished_run / "metrics.json").read_text())
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert "license" in front and front["license"] is None  # left for the user
    metrics = config["metrics"]
    for fact in (
        "`mma`",
        "MMA: Multi-Modal Adapter",
        "clipadapt-tiny",
        "base2novel",
        "eurosat",
        "| shots | 2 |",
        "| seed(s) | 3 |",
        f"| hm | {metrics['hm']} |",
        f"| base | {metrics['base']} |",
        "clipadapt train --method mma --dataset eurosat",
    ):
        assert fact in card, fact
    # The card's command remakes the run: it parses, and its settings are the recorded ones.
    command = next(line for line in card.splitlines() if line.startswith("clipadapt train"))
    import shlex

    from clipadapt.cli import build_parser

    args = build_parser().parse_args(shlex.split(command)[1:])
    assert (args.method, args.shots, args.seed, args.protocol) == ("mma", 2, 3, "base2novel")
    assert "scale=0.1" in command and "epochs=1" in command


def test_export_refuses_an_unfinished_run_a_diverged_run_and_a_non_empty_folder(
    finished_run, tmp_path
):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(finished_run, unfinished)
    (unfinished / "metrics.json").unlink()
    with pytest.raises(ClipadaptError, match="not a finished training run .no metrics.json"):
        clipadapt.adapters.export_run(str(unfinished), str(tmp_path / "a"))
    diverged = tmp_path / "diverged"
    shutil.copytree(finished_run, diverged)
    with open(diverged / "log.jsonl", "a") as f:
        f.write(json.dumps({"event": "diverged", "epoch": 1, "at": "step 3: loss nan"}) + "\n")
    with pytest.raises(ClipadaptError, match="diverged"):
        clipadapt.adapters.export_run(str(diverged), str(tmp_path / "b"))
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("")
    with pytest.raises(ClipadaptError, match="exists and is not empty"):
        clipadapt.adapters.export_run(str(finished_run), str(full))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_an_export_loads_back_from_its_folder_and_from_an_offline_hub_id(
    finished_run, tmp_path, monkeypatch
):
    out = tmp_path / "export"
    clipadapt.adapters.export_run(str(finished_run), str(out))
    expected = _logits(str(finished_run / "adapter.safetensors"))
    assert torch.equal(_logits(str(out)), expected)
    assert torch.equal(
        _logits(str(finished_run)), expected
    )  # a run folder is a folder holding an adapter
    hf_home = tmp_path / "hf"
    _fill_hub_cache(hf_home, "someone/mma-eurosat", out)
    _offline_hub(monkeypatch, hf_home)
    assert torch.equal(_logits("hf-hub:someone/mma-eurosat"), expected)
    assert torch.equal(_logits("someone/mma-eurosat"), expected)  # no such local path: a Hub id
    with pytest.raises(
        ClipadaptError,
        match="Hub adapter 'someone/other'.*offline .HF_HUB_OFFLINE is set. and not in the cache",
    ):
        clipadapt.load_model("hf-hub:someone/other")


def test_eval_predict_and_transfer_take_a_folder_and_a_hub_id(
    finished_run, learn_root, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "export"
    clipadapt.adapters.export_run(str(finished_run), str(out))
    hf_home = tmp_path / "hf"
    _fill_hub_cache(hf_home, "someone/mma-eurosat", out)
    _offline_hub(monkeypatch, hf_home)
    accuracies = []
    for i, checkpoint in enumerate(
        [str(finished_run / "adapter.safetensors"), str(out), "hf-hub:someone/mma-eurosat"]
    ):
        assert (
            main(
                [
                    "eval",
                    "--checkpoint",
                    checkpoint,
                    "--dataset",
                    "eurosat",
                    "--data-root",
                    learn_root,
                    "--subsample",
                    "base",
                    "--out",
                    str(tmp_path / f"eval{i}"),
                ]
            )
            == 0
        )
        accuracies.append(
            json.loads((tmp_path / f"eval{i}" / "metrics.json").read_text())["accuracy"]
        )
    assert len(set(accuracies)) == 1
    image = _an_image(tmp_path)
    outputs = []
    for checkpoint in (str(finished_run / "adapter.safetensors"), "someone/mma-eurosat"):
        capsys.readouterr()
        assert main(["predict", "--checkpoint", checkpoint, str(image)]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0]
    from clipadapt.adapters import recorded_run, resolve_adapter

    assert (
        recorded_run(resolve_adapter("hf-hub:someone/mma-eurosat"))["dataset"] == "eurosat"
    )  # transfer's source


def _an_image(tmp_path):
    from PIL import Image

    path = tmp_path / "image.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(path)
    return path


def test_a_hub_adapter_comes_with_its_recorded_run_when_the_repository_has_one(
    finished_run, tmp_path, monkeypatch
):
    import huggingface_hub
    from huggingface_hub.utils import EntryNotFoundError

    from clipadapt.adapters import recorded_run, resolve_adapter

    out = tmp_path / "export"
    clipadapt.adapters.export_run(str(finished_run), str(out))
    asked = []

    def download(repo_id, filename, local_files_only=False):  # the Hub, as hf_hub_download sees it
        asked.append((repo_id, filename))
        if repo_id == "someone/bare" and filename != "adapter.safetensors":
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        snapshot = tmp_path / "snapshots" / repo_id.replace("/", "--")
        snapshot.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / filename, snapshot / filename)
        return str(snapshot / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    recorded = recorded_run(resolve_adapter("hf-hub:someone/full"))
    assert asked == [("someone/full", "adapter.safetensors"), ("someone/full", "config.json")]
    run = json.loads((out / "config.json").read_text())["run"]
    assert (recorded["seed"], recorded["shots"], recorded["dataset"]) == (
        run["seed"],
        run["shots"],
        run["dataset"],
    )
    assert (
        recorded_run(resolve_adapter("hf-hub:someone/bare")) == {}
    )  # the adapter file alone still loads


def test_every_method_names_its_paper_on_the_model_card():
    from clipadapt.adapters import method_paper
    from clipadapt.methods import METHODS

    for name, cls in METHODS.items():
        assert cls.paper is not None and cls.paper.title and cls.paper.venue, name
        assert method_paper(name) == str(cls.paper) and cls.paper.title in method_paper(name)


def test_a_cross_dataset_runs_card_and_summary_show_its_source_and_target_accuracies():
    from clipadapt.adapters import _metric_lines
    from clipadapt.run_logging import final_metrics

    metrics = {
        "protocol": "cross_dataset",
        "source": 70.0,
        "dtd": 40.0,
        "eurosat": 30.5,
        "target_average": 35.25,
        "targets": ["dtd", "eurosat"],
        "shots": 16,
        "seed": 1,
        "train_seconds": 3.0,
    }
    assert _metric_lines(metrics) == [
        "| source | 70.0 |",
        "| dtd | 40.0 |",
        "| eurosat | 30.5 |",
        "| target_average | 35.25 |",
    ]
    assert final_metrics(metrics) == {
        "eval/source": 70.0,
        "eval/dtd": 40.0,
        "eval/eurosat": 30.5,
        "eval/target_average": 35.25,
    }
