"""The run object: normalisation, resolution, its one record schema and reading it back; the trainer's
resumable state."""

import dataclasses
import inspect
import math
import shlex
import subprocess
import sys

import pytest
import torch

from clipadapt.adapters import train_command
from clipadapt.engine import TrainerState
from clipadapt.errors import ClipadaptError
from clipadapt.registry import PROTOCOLS
from clipadapt.run import planned_record, record_changes, train
from clipadapt.runconfig import resolve_run
from clipadapt.runspec import RunSpec, as_read_back


def _record(spec: RunSpec) -> dict:
    return as_read_back(resolve_run(spec).record())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_record_reads_back_into_a_run_that_records_it_again(protocol):
    spec = RunSpec.from_arguments(
        "mma",
        "eurosat",
        "data",
        protocol=protocol,
        shots=2,
        seed=3,
        base_ratio="3:1",
        prompts="openai80",
        lr=0.05,
        betas=[0.8, 0.9],
    )
    record = _record(spec)
    assert (record["protocol"], record["shots"], record["seed"], record["lr"]) == (
        protocol,
        2,
        3,
        0.05,
    )
    assert record["base_ratio"] == "3:1" and record["prompts"] == "openai80"
    again = RunSpec.from_record({**record, "world_size": 2})  # how it ran is not what it is
    assert again.config == "none" and "world_size" not in again.settings_dict
    assert _record(again) == {**record, "preset": "none"}  # every setting spelt out, no preset
    assert record_changes(record, _record(again)) == []
    older = {
        k: v for k, v in record.items() if k != "pretrained"
    }  # a field added since, at its default
    assert record_changes(older, {**record, "pretrained": None}) == []
    assert record_changes(older, record) == [("pretrained", None, "shipped")]
    assert RunSpec.from_record(_record(again)) == again  # the second trip changes nothing


def test_a_study_run_records_its_study_and_variant_and_reads_them_back():
    spec = RunSpec.from_arguments("coop", "eurosat", "data", study="ablation", epochs=1)
    record = _record(spec)
    assert (record["study"], record["variant"]) == ("ablation", "coop")  # variant: the method
    assert RunSpec.from_record(record).variant == "coop"
    assert "study" not in _record(RunSpec.from_arguments("coop", "eurosat", "data"))


def test_normalisation_checks_names_and_fills_the_defaults():
    given = RunSpec.from_arguments("mma", "eurosat", "data", protocol="dg")
    spec = given.normalised()
    assert given.protocol == "dg" and spec.protocol == "domain_generalization"
    assert (spec.backbone, spec.pretrained) == ("synthetic", "shipped")
    assert (
        RunSpec(method="mma", dataset="eurosat", data_root="d").normalised().protocol
        == "base2novel"
    )
    assert RunSpec(method="mma", dataset="folder", data_root="d").normalised().protocol == "fewshot"
    vit = RunSpec.from_arguments("mma", "eurosat", "data", backbone="ViT-B-16").normalised()
    assert (vit.backbone, vit.pretrained) == ("ViT-B-16", "openai")
    assert vit.normalised() == vit
    with pytest.raises(ClipadaptError, match="mmma"):
        RunSpec.from_arguments("mmma", "eurosat", "data").normalised()
    with pytest.raises(ClipadaptError, match="protocol"):
        RunSpec.from_arguments("mma", "eurosat", "data", protocol="base2nvel").normalised()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.shots = 4


def test_a_typod_or_flag_owned_setting_is_refused():
    with pytest.raises(ClipadaptError, match=r"unknown setting\(s\) \['epoch'\]"):
        resolve_run(RunSpec.from_arguments("mma", "eurosat", "data", epoch=3))
    with pytest.raises(ClipadaptError, match=r"unknown setting\(s\) \['epoch'\]"):
        planned_record("mma", "eurosat", "data", epoch=3)
    with pytest.raises(ClipadaptError, match="set with --seed"):
        resolve_run(
            RunSpec(method="mma", dataset="eurosat", data_root="data", settings=(("seed", 3),))
        )
    with pytest.raises(ClipadaptError, match="epochs.: expected an integer"):
        resolve_run(RunSpec.from_arguments("mma", "eurosat", "data", epochs="many"))


def test_resolution_gives_config_objects_and_the_seed():
    run = resolve_run(RunSpec.from_arguments("mma", "eurosat", "data", seed=7, scale=0.3, epochs=2))
    assert run.method_config.scale == 0.3 and type(run.method_config).__name__.endswith("Config")
    assert (run.train_config.epochs, run.train_config.seed) == (2, 7)
    assert run.preset == "preset:synthetic/mma.yaml" and run.protocol == "base2novel"


def test_the_wrappers_take_every_field_of_the_run():
    for wrapper in (train, planned_record):
        shown = inspect.signature(wrapper).parameters
        assert set(RunSpec.argument_names()) <= set(shown)
        assert (
            shown["shots"].default == 16 and shown["settings"].kind is inspect.Parameter.VAR_KEYWORD
        )


def test_the_remake_command_parses_and_records_the_same_run():
    from clipadapt.cli import build_parser
    from clipadapt.runconfig import parse_overrides

    record = _record(
        RunSpec.from_arguments(
            "coop", "eurosat", "data", protocol="fewshot", shots=4, study="s", variant="v", lr=0.1
        )
    )
    command = train_command("coop", record)
    assert command.startswith("clipadapt train --method coop --dataset eurosat ")
    args = build_parser().parse_args(shlex.split(command)[1:])
    named = {"prompts": args.prompts, "base_ratio": args.base_ratio}
    settings = parse_overrides(args.overrides)
    named.update({k: settings.pop(k) for k in list(named) if k in settings})
    remade = planned_record(
        args.method,
        args.dataset,
        args.data_root,
        protocol=args.protocol,
        shots=args.shots,
        seed=args.seed,
        backbone=args.backbone,
        pretrained=args.pretrained,
        config=args.config,
        study=args.study,
        variant=args.variant,
        **named,
        **settings,
    )
    assert record_changes(record, remade) == [] and remade["variant"] == "v"


def test_a_method_config_object_builds_the_model_as_given():
    from clipadapt.model import build_model

    run = resolve_run(RunSpec.from_arguments("mma", "eurosat", "data", scale=0.3))
    model = build_model("mma", ["a", "b"], method_config=run.method_config)
    assert model.method.config is run.method_config
    with pytest.raises(ClipadaptError, match="not both"):
        build_model("mma", ["a", "b"], method_config=run.method_config, scale=0.2)
    with pytest.raises(ClipadaptError, match="its config"):
        build_model("coop", ["a", "b"], method_config=run.method_config)


# ---- the trainer's resumable state ----------------------------------------------------------------
def test_the_trainer_state_round_trips_through_a_checkpoint_file(tmp_path):
    state = TrainerState(
        start_epoch=3,
        train_seconds=1.5,
        data_seconds=0.25,
        step_seconds=None,
        images_seen=96,
        last_loss=0.7,
        best_val=0.5,
        best_epoch=2,
        since_best=1,
        stopped=True,
        best_state={"w": torch.ones(2)},
        epoch_average={"w": torch.full((2,), 0.5)},
    )
    path = tmp_path / "state.pt"
    torch.save(state.state_dict(), path)
    loaded = TrainerState()
    loaded.load_state_dict(torch.load(path, weights_only=True))
    for f in dataclasses.fields(TrainerState):
        ours, theirs = getattr(state, f.name), getattr(loaded, f.name)
        if isinstance(ours, dict):
            assert ours.keys() == theirs.keys()
            assert all(torch.equal(ours[k], theirs[k]) for k in ours), f.name
        else:
            assert ours == theirs, f.name


def test_a_checkpoint_in_the_older_layouts_still_loads():
    written_before = {  # the keys Trainer.save_checkpoint wrote by name before TrainerState
        "epoch": 2,
        "method": {},
        "optimizer": {},
        "scaler": {},
        "train_seconds": 3.0,
        "data_seconds": 0.5,
        "step_seconds": 1.0,
        "images_seen": 64,
        "last_loss": 1.25,
        "selection": {"best_val": 0.75, "best_epoch": 1, "since_best": 1, "stopped": False},
        "best_method": None,
        "epoch_average": None,
    }
    state = TrainerState()
    state.load_state_dict(written_before)
    assert (state.start_epoch, state.images_seen, state.best_val, state.since_best) == (
        2,
        64,
        0.75,
        1,
    )
    assert state.state_dict() == {
        k: v for k, v in written_before.items() if k not in ("method", "optimizer", "scaler")
    }
    oldest = {"epoch": 1, "train_seconds": 2.0, "images_seen": 32, "last_loss": math.nan}
    state = TrainerState()
    state.load_state_dict(oldest)  # before timing, selection and averaging were saved
    assert state.step_seconds is None and state.data_seconds == 0.0
    assert (state.best_val, state.best_epoch, state.stopped, state.best_state) == (
        -1.0,
        0,
        False,
        None,
    )


def test_the_run_object_reads_records_without_torch():
    code = (
        "import sys; from clipadapt.runspec import RunSpec; "
        "RunSpec.from_record({'method': 'mma', 'dataset': 'eurosat', 'data_root': 'd'}); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
