"""Cross-dataset and domain generalization: one source adapter, evaluated on every target."""

import json

import pytest

from clipadapt.cli import main
from clipadapt.errors import ClipadaptError
from clipadapt.protocols import CROSS_DATASET_TARGETS, DG_TARGETS
from clipadapt.registry import canonical_protocol

TINY = ["--backbone", "clipadapt-tiny", "--pretrained", "none"]
QUICK = ["optimizer=adamw", "lr=0.01", "scale=0.1", "batch_size=4", "epochs=1", "augment=false"]


def _train(root, out, protocol, dataset="imagenet", backbone=TINY, shots="2"):
    return main(
        [
            "train",
            "--method",
            "mma",
            "--dataset",
            dataset,
            "--data-root",
            root,
            "--shots",
            shots,
            "--protocol",
            protocol,
            *backbone,
            "--config",
            "none",
            "--out",
            str(out),
            *QUICK,
        ]
    )


def _metrics(folder):
    return json.loads((folder / "metrics.json").read_text())


@pytest.mark.parametrize(
    "protocol, targets",
    [("cross_dataset", CROSS_DATASET_TARGETS["imagenet"]), ("dg", DG_TARGETS["imagenet"])],
)
def test_train_once_evaluate_every_target_and_again_from_the_saved_adapter(
    fake_root, tmp_path, protocol, targets
):
    assert _train(fake_root, tmp_path / "run", protocol) == 0
    trained = _metrics(tmp_path / "run")
    assert trained["protocol"] == canonical_protocol(protocol) and trained["targets"] == targets
    assert trained["target_average"] == pytest.approx(
        sum(trained[t] for t in targets) / len(targets), abs=1e-3
    )
    assert all(0 <= trained[t] <= 100 for t in ["source", *targets])
    # the same adapter, evaluated without training, gives the same numbers
    code = main(
        [
            "transfer",
            "--checkpoint",
            str(tmp_path / "run" / "adapter.safetensors"),
            "--protocol",
            protocol,
            "--data-root",
            fake_root,
            "--out",
            str(tmp_path / "again"),
        ]
    )
    assert code == 0
    again = _metrics(tmp_path / "again")
    for key in [
        "source",
        *targets,
        "target_average",
        "method",
        "dataset",
        "seed",
        "shots",
        "trainable_params",
    ]:
        assert again[key] == trained[key], key


def test_protocol_names_and_sources_are_checked(fake_root, tmp_path, capsys):
    assert canonical_protocol("dg") == "domain_generalization"
    with pytest.raises(ClipadaptError, match="cross_dataset"):
        canonical_protocol("crossdataset")
    assert _train(fake_root, tmp_path / "x", "domain_generalization", dataset="dtd") == 2
    err = capsys.readouterr().err
    assert "no domain_generalization targets for source 'dtd'" in err and "imagenet" in err
    assert not (tmp_path / "x" / "adapter.safetensors").exists()  # refused before training


@pytest.mark.slow
def test_synthetic_world_source_adapter_on_shifted_domains_and_other_datasets(tmp_path):
    """One adapter trained on syn_objects: domain generalization, then cross-dataset from the same file."""
    root = str(tmp_path / "data")
    assert (
        _train(
            root,
            tmp_path / "dg",
            "domain_generalization",
            dataset="syn_objects",
            backbone=["--backbone", "synthetic", "--pretrained", "shipped"],
        )
        == 0
    )
    dg = _metrics(tmp_path / "dg")
    assert dg["targets"] == DG_TARGETS["syn_objects"]
    assert dg["source"] > 3 * 100 / 20  # the pretrained tiny CLIP is far above chance (20 classes)
    code = main(
        [
            "transfer",
            "--checkpoint",
            str(tmp_path / "dg" / "adapter.safetensors"),
            "--protocol",
            "cross_dataset",
            "--data-root",
            root,
            "--out",
            str(tmp_path / "xd"),
        ]
    )
    assert code == 0
    xd = _metrics(tmp_path / "xd")
    assert xd["source"] == dg["source"] and xd["targets"] == CROSS_DATASET_TARGETS["syn_objects"]
    assert xd["syn_colours"] > 3 * 100 / 10
