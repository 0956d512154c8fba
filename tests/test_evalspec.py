"""The evaluation objects: `evaluate` and `transfer` keep every keyword they took, and their keywords
part into what an evaluation is (EvalSpec, TransferSpec) and how it runs (EvalExecution)."""

import dataclasses
import inspect
import json

import pytest

import clipadapt
from clipadapt.evalspec import (
    TRANSFER_EXECUTION,
    EvalExecution,
    EvalSpec,
    TransferSpec,
    field_names,
    split_keywords,
)
from clipadapt.run import evaluate, transfer

KW, POS = inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD

# The signatures as they were written out by hand before the objects: (name, kind, default).
EVALUATE_BEFORE = [
    ("dataset", POS, inspect.Parameter.empty),
    ("data_root", POS, inspect.Parameter.empty),
    ("out", POS, inspect.Parameter.empty),
    ("method", KW, None),
    ("checkpoint", KW, None),
    ("split", KW, "test"),
    ("subsample", KW, "all"),
    ("shots", KW, -1),
    ("seed", KW, 1),
    ("backbone", KW, None),
    ("pretrained", KW, None),
    ("backbone_from_checkpoint", KW, False),
    ("prompts", KW, None),
    ("device", KW, "cpu"),
    ("batch_size", KW, 100),
    ("workers", KW, None),
    ("feature_cache", KW, True),
    ("save_predictions", KW, False),
    ("overwrite", KW, False),
    ("progress", KW, True),
]
TRANSFER_BEFORE = [
    ("checkpoint", POS, inspect.Parameter.empty),
    ("protocol", POS, inspect.Parameter.empty),
    ("data_root", POS, inspect.Parameter.empty),
    ("out", POS, inspect.Parameter.empty),
    ("source", KW, None),
    ("shots", KW, 16),
    ("seed", KW, 1),
    ("backbone", KW, None),
    ("pretrained", KW, None),
    ("device", KW, "cpu"),
    ("batch_size", KW, 100),
    ("workers", KW, None),
    ("feature_cache", KW, True),
    ("overwrite", KW, False),
    ("progress", KW, True),
]


def _shown(function):
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


@pytest.mark.parametrize(
    ("function", "before"),
    [
        (evaluate, EVALUATE_BEFORE),
        (transfer, TRANSFER_BEFORE),
        (clipadapt.evaluate, EVALUATE_BEFORE),
    ],
)
def test_the_signature_lists_every_keyword_it_took_before(function, before):
    assert _shown(function) == before
    with pytest.raises(TypeError, match="unexpected keyword argument 'epochs'"):
        function(*["x"] * sum(kind is POS for _, kind, _ in before), epochs=3)
    with pytest.raises(TypeError):  # the keywords stay keyword-only
        function(*["x"] * (sum(kind is POS for _, kind, _ in before) + 1))


def test_keywords_part_into_the_spec_and_the_execution_and_back():
    given = {
        "method": "zeroshot",
        "split": "val",
        "subsample": "new",
        "shots": 4,
        "seed": 2,
        "backbone": "clipadapt-tiny",
        "prompts": "openai80",
        "device": "cpu",
        "batch_size": 7,
        "workers": 0,
        "feature_cache": False,
        "save_predictions": True,
    }
    what, how = split_keywords("evaluate", given, field_names(EvalSpec), field_names(EvalExecution))
    spec, execution = EvalSpec("eurosat", "data", **what), EvalExecution(**how)
    assert (spec.split, spec.shots, execution.batch_size, execution.save_predictions) == (
        "val",
        4,
        7,
        True,
    )
    both = {**dataclasses.asdict(spec), **dataclasses.asdict(execution)}
    assert {k: both[k] for k in given} == given  # nothing lost or changed on the way
    assert EvalSpec(**dataclasses.asdict(spec)) == spec  # the object round-trips through its fields
    assert not set(field_names(EvalSpec)) & set(field_names(EvalExecution))  # no field is both
    assert "save_predictions" not in TRANSFER_EXECUTION
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.seed = 3
    with pytest.raises(TypeError, match="transfer\\(\\) got an unexpected keyword argument"):
        split_keywords(
            "transfer", {"save_predictions": True}, field_names(TransferSpec), TRANSFER_EXECUTION
        )


def test_evaluate_writes_the_metrics_it_wrote_before(learn_root, tmp_path):
    out = tmp_path / "e"
    metrics = evaluate(
        "eurosat",
        learn_root,
        str(out),
        subsample="new",
        shots=2,
        backbone="clipadapt-tiny",
        pretrained="none",
        workers=0,
        progress=False,
        save_predictions=True,
    )
    assert list(metrics) == [
        "accuracy",
        "num_images",
        "dataset",
        "split",
        "shots",
        "seed",
        "subsample",
        "method",
        "backbone",
        "pretrained",
        "backbone_identity",
        "num_classes",
        "scored",
        "prompt_template",
        "prompts",
        "data_root",
        "checkpoint",
        "eval_seconds",
        "clipadapt",
    ]
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert (metrics["method"], metrics["split"], metrics["subsample"], metrics["shots"]) == (
        "zeroshot",
        "test",
        "new",
        2,
    )
    assert (metrics["backbone"], metrics["pretrained"], metrics["checkpoint"]) == (
        "clipadapt-tiny",
        "none",
        None,
    )
    assert metrics["num_classes"] == 5 and (out / "predictions.csv").is_file()
