"""One conversion and check of settings and method options, for the command line, YAML and Python alike."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from clipadapt.data.coop import COOP_DATASETS
from clipadapt.methods import METHODS, make_config
from clipadapt.methods.base import MethodConfig
from clipadapt.registry import METHOD_NAMES, dataset_names
from clipadapt.runconfig import parse_overrides, read_preset, resolve
from clipadapt.settings import TrainConfig
from clipadapt.validation import SettingError


def test_scientific_notation_from_cli_yaml_and_python(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("lr: 1e-3\nweight_decay: 5e-4\n")  # PyYAML reads both as strings
    assert isinstance(read_preset(str(preset))["lr"], str)
    _, cfg, resolved = resolve(
        "mma", read_preset(str(preset)), parse_overrides(["warmup_lr=1e-6", "scale=1e-2"])
    )
    assert (cfg.lr, cfg.weight_decay, cfg.warmup_lr) == (0.001, 0.0005, 1e-6)
    assert resolved["scale"] == 0.01 and isinstance(resolved["lr"], float)
    assert TrainConfig(lr="1e-3").lr == 0.001
    assert make_config("mma", {"scale": "1e-3"}).scale == 0.001


@pytest.mark.parametrize(
    "make,fragments",
    [
        (lambda: TrainConfig(epochs="abc"), ["'epochs'", "an integer", "'abc'", "(str)"]),
        (lambda: TrainConfig(epochs=2.5), ["'epochs'", "an integer", "2.5", "(float)"]),
        (lambda: TrainConfig(augment="maybe"), ["'augment'", "true or false"]),
        (lambda: TrainConfig(optimizer="lion"), ["'optimizer'", "sgd"]),
        (lambda: TrainConfig(betas=(0.9,)), ["'betas'", "2 values"]),
        (lambda: TrainConfig(lr=0), ["'lr'", "> 0"]),
        (
            lambda: make_config("mma", {"adapter_dim": "abc"}),
            ["'adapter_dim'", "an integer", "'abc'"],
        ),
        (lambda: make_config("mma", {"template": "a photo"}), ["'template'", "{}"]),
        (lambda: make_config("clip_adapter", {"ratio": 2}), ["'ratio'", "<= 1"]),
    ],
)
def test_wrong_value_names_key_value_and_type(make, fragments):
    with pytest.raises(SettingError) as info:
        make()
    for fragment in fragments:
        assert fragment in str(info.value)


def test_integral_and_optional_values_convert():
    assert TrainConfig(epochs="3", batch_size=8.0, augment="false").epochs == 3
    assert TrainConfig(betas="0.9,0.98").betas == (0.9, 0.98)
    assert make_config("mma", {"adapter_start": "none"}).adapter_start is None
    assert make_config("mma", {"adapter_start": 5}).adapter_start == 5


def test_a_new_field_is_checked_without_extra_code():
    @dataclass
    class NewConfig(MethodConfig):
        depth: int = 2
        gain: float | None = None

    assert NewConfig(depth="3", gain="1e-2").gain == 0.01
    with pytest.raises(SettingError, match="'depth': expected an integer"):
        NewConfig(depth="deep")


def test_registry_names_match_the_methods_and_datasets():
    from clipadapt.data.synthetic import SYNTHETIC_DATASETS
    from clipadapt.registry import SYNTHETIC_DATASET_NAMES

    # METHODS is built from the registry (the built-ins first, then any installed plugin), each
    # class under its own name
    assert tuple(METHODS)[: len(METHOD_NAMES)] == METHOD_NAMES
    assert all(cls.name == name for name, cls in METHODS.items())
    assert (
        tuple(SYNTHETIC_DATASETS) == SYNTHETIC_DATASET_NAMES
    )  # a new synthetic dataset: add its name there
    for name in dataset_names():
        assert name == "folder" or name in SYNTHETIC_DATASETS or name in COOP_DATASETS


def _library_imports() -> dict[str, set[str]]:
    src = Path(__file__).resolve().parents[1] / "src" / "clipadapt"
    graph = {}
    for path in src.rglob("*.py"):
        module = ".".join(("clipadapt", *path.relative_to(src).with_suffix("").parts)).removesuffix(
            ".__init__"
        )
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):  # function-level imports count too
            if isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rsplit(".", 1)[0]
                name = (
                    (base + "." + node.module if node.module else base)
                    if node.level
                    else node.module
                )
                targets.add(name)
                targets.update(f"{name}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
        graph[module] = targets
    return {m: {t for t in ts if t in graph and t != m} for m, ts in graph.items()}


def test_no_import_circle_through_the_shipped_weights():
    graph = _library_imports()

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            for nxt in graph.get(node, ()):
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    # Loading a backbone never reaches the pretraining script, which sits above the library.
    assert not reaches("clipadapt.backbone", "clipadapt.synthetic.pretrain")
    for module in (
        "clipadapt.backbone",
        "clipadapt.weights",
        "clipadapt.synthetic_weights",
        "clipadapt.model",
        "clipadapt.methods",
    ):
        assert not reaches(module, module), module
