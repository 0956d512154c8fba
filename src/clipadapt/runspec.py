"""What a run is, in one object: `RunSpec`, its resolution into the method's config and the training
settings (`ResolvedRun`), its config.yaml record and its reading back from one.

`clipadapt.train`, `planned_record`, `changed_settings`, the resume check, the sweep's rerun check and
the export's remake command all go through this object and its one record schema. Where and how a
run executes (its folder, device, progress bars, feature cache) is not part of it: two calls that
differ only there are the same run.

A field's `kind` says how the record carries it: RECORDED fields under their own name (a new
run-level field is one line here: it is recorded, read back, compared and spelt as a flag), SETTING
fields among the resolved settings (they have a flag, but the method or trainer reads them). Plain
Python, imported by the adapter files' remake command: resolving a run (the settings' types, which
pull in torch) is `runconfig.resolve_run`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

import yaml

from .checks import check_run_names
from .errors import ClipadaptError
from .registry import (
    FOLDER_DATASET,
    RUN_CIRCUMSTANCES,
    canonical_protocol,
    is_class_path,
)
from .synthetic_weights import DEFAULT_BACKBONE, default_pretrained

RECORDED = "recorded"  # config.yaml holds it under its own name; the command line has a flag for it
SETTING = "setting"  # a setting with a flag of its own: recorded among the resolved settings
NO_PRESET = "none"  # --config none: the method's own defaults (runconfig.NO_PRESET)


def _recorded(default: Any) -> Any:
    return field(default=default, metadata={"kind": RECORDED})


def _setting(default: Any) -> Any:
    return field(default=default, metadata={"kind": SETTING})


def default_protocol(dataset: str) -> str:
    """A user's own folder has no base/novel convention: it trains and tests on all its classes."""
    return "fewshot" if dataset == FOLDER_DATASET else "base2novel"


def default_backbone(backbone: str | None, pretrained: str | None) -> tuple[str, str]:
    """The backbone and weights a run uses when none are named: the shipped tiny CLIP and its weights;
    a named open_clip model gets OpenAI's weights unless told."""
    backbone = backbone or DEFAULT_BACKBONE
    return backbone, str(pretrained) if pretrained is not None else default_pretrained(backbone)


def own_method_name(method: str) -> str:
    """A method's own name; a class path `module:Class` is imported to read it (torch is loaded then,
    not before)."""
    if not is_class_path(method):
        return method
    from .methods import method_name  # deferred: the method classes load torch

    return method_name(method)


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """What a run is: method, data, protocol, draw, backbone, preset and settings (not where it runs).

    Build one with `from_arguments` (train's keywords) or `from_record` (a config.yaml); `normalised()`
    fills the defaults; `runconfig.resolve_run(spec)` gives the method config and the training
    settings, and its `.record()` is the config.yaml the run writes, its keys in this field order."""

    method: str
    protocol: str | None = _recorded(None)  # None: the dataset's default (default_protocol)
    dataset: str = field(metadata={"kind": RECORDED})
    data_root: str = field(metadata={"kind": RECORDED})
    shots: int = _recorded(16)
    seed: int = _recorded(1)
    backbone: str | None = _recorded(None)  # None: the shipped tiny CLIP
    pretrained: str | None = _recorded(None)  # None: the backbone's default weights
    # The preset (recorded as `preset`, by what it resolved to): None the shipped one for the method,
    # protocol and backbone; "none" the method's own defaults; else a YAML file or a preset's name.
    config: str | None = None
    prompts: str | list[str] | None = _setting(None)
    base_ratio: str | None = _setting(None)
    study: str | None = (
        None  # a study's run: the report groups it by study and names its row by variant
    )
    variant: str | None = None
    # Method options and training settings over the preset, as (key, value) pairs in the given order.
    settings: tuple[tuple[str, Any], ...] = ()

    # ---- building one ----------------------------------------------------------------------------
    @classmethod
    def argument_names(cls) -> tuple[str, ...]:
        """The keyword arguments a run takes besides its settings (train's, planned_record's)."""
        return tuple(f.name for f in fields(cls) if f.name != "settings")

    @classmethod
    def recorded_defaults(cls) -> dict[str, Any]:
        """Each RECORDED field's default: what a record written before the field existed meant."""
        return {
            f.name: f.default
            for f in fields(cls)
            if f.metadata.get("kind") == RECORDED and f.default is not MISSING
        }

    @classmethod
    def setting_names(cls) -> frozenset[str]:
        """The fields that are settings too (their flags set them; prompts=... does as well)."""
        return frozenset(f.name for f in fields(cls) if f.metadata.get("kind") == SETTING)

    @classmethod
    def from_arguments(cls, method: str, dataset: str, data_root: str, **arguments: Any) -> RunSpec:
        """The run `train(method, dataset, data_root, **arguments)` is, as given (`normalised()` fills
        its defaults): keywords that name a field set it, every other one is a setting (checked when
        the run is resolved)."""
        names = set(cls.argument_names())
        given = {k: v for k, v in arguments.items() if k in names}
        settings = tuple((k, v) for k, v in arguments.items() if k not in names)
        return cls(method=method, dataset=dataset, data_root=data_root, settings=settings, **given)

    def normalised(self) -> RunSpec:
        """This run with its names checked (before torch: a typo is not a missing preset), the protocol's
        canonical name or the dataset's default, and the default backbone and weights filled in."""
        check_run_names(self.method, self.dataset, self.protocol)
        protocol = (
            canonical_protocol(self.protocol) if self.protocol else default_protocol(self.dataset)
        )
        backbone, pretrained = default_backbone(self.backbone, self.pretrained)
        return replace(
            self,
            method=own_method_name(self.method),
            protocol=protocol,
            backbone=backbone,
            pretrained=pretrained,
        )

    @property
    def settings_dict(self) -> dict[str, Any]:
        """The settings as a dict (a later pair wins)."""
        return dict(self.settings)

    def overrides(self) -> dict[str, Any]:
        """What goes over the preset: the settings, and the SETTING fields that are set."""
        given = self.settings_dict
        for f in fields(self):
            if f.metadata.get("kind") == SETTING and getattr(self, f.name) is not None:
                given[f.name] = getattr(self, f.name)
        return given

    # ---- its record read back ------------------------------------------------------------------------
    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RunSpec:
        """The run a config.yaml records, with every resolved setting spelt out over no preset, so that it
        resolves to the same record whatever the shipped presets say now. How it ran (world_size) and the
        preset's name are not part of it."""
        if not isinstance(record, Mapping) or "method" not in record:
            raise ClipadaptError(
                "a run record (config.yaml) must be a mapping that names its method"
            )
        own = {
            f.name: record[f.name]
            for f in fields(cls)
            if f.metadata.get("kind") in (RECORDED, SETTING) and f.name in record
        }
        not_settings = {"method", "preset", "study", "variant", *RUN_CIRCUMSTANCES, *own}
        return cls(
            method=record["method"],
            config=NO_PRESET,
            study=record.get("study"),
            variant=record.get("variant"),
            settings=tuple((k, v) for k, v in record.items() if k not in not_settings),
            **own,
        )

    def train_argv(self, data_root: str, out: str) -> list[str]:
        """The `clipadapt train` arguments that make this run into `out`, reading the data at `data_root`:
        the RECORDED fields as flags, the SETTING fields and settings as key=value (JSON where YAML
        would misread the text)."""
        words = ["train", "--method", self.method, "--dataset", self.dataset]
        for f in fields(self):
            value = data_root if f.name == "data_root" else getattr(self, f.name)
            if f.metadata.get("kind") != RECORDED or f.name == "dataset" or value is None:
                continue
            words += ["--" + f.name.replace("_", "-"), str(value)]
        if self.config is not None:
            words += ["--config", self.config]
        if self.study or self.variant:
            words += ["--study", str(self.study), "--variant", str(self.variant or self.method)]
        words += ["--out", out]
        for key, value in self.overrides().items():
            if value is not None:
                words.append(f"{key}={_as_setting_text(value)}")
        return words


def _as_setting_text(value: Any) -> str:
    """A setting's value as key=value text that reads back (as YAML) to the same value: plain where it
    does, JSON where YAML would read the plain text otherwise ('' as null, 1:1 as a number)."""
    text = json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)
    try:
        reads_back = yaml.safe_load(text) == value
    except yaml.YAMLError:
        reads_back = False
    return text if reads_back else json.dumps(value)


@dataclass(frozen=True)
class ResolvedRun:
    """A run with its settings resolved: the preset it used, the method's config, the training settings."""

    spec: RunSpec  # normalised
    preset: str  # what the preset resolved to: 'preset:NAME', 'none' or a file's absolute path
    # The method's MethodConfig and the TrainConfig, built by runconfig.resolve_run (their types are
    # not imported here: this module stays plain Python, and the adapter files read records with it).
    method_config: Any
    train_config: Any

    @property
    def protocol(self) -> str:
        """The protocol's canonical name."""
        return self.spec.protocol

    def record(self) -> dict[str, Any]:
        """The run's config.yaml: everything that defines it, in a fixed order (as written, before
        YAML; `as_read_back` gives it as the file reads back)."""
        spec = self.spec
        record = {
            f.name: getattr(spec, f.name)
            for f in fields(spec)
            if f.metadata.get("kind") == RECORDED
        }
        record.update(data_root=os.path.abspath(spec.data_root), pretrained=str(spec.pretrained))
        record["preset"] = self.preset
        record.update(
            method=spec.method, **self.method_config.to_dict(), **self.train_config.to_dict()
        )
        if spec.study or spec.variant:
            record.update(study=spec.study, variant=spec.variant or spec.method)
        return record


# ---- records as config.yaml holds them ---------------------------------------------------------
def as_read_back(record: dict) -> dict:
    """A record as its config.yaml reads back (tuples as lists)."""
    return yaml.safe_load(yaml.safe_dump(record, sort_keys=False))


def read_record(path: str) -> dict:
    """A config.yaml's record ({} for an empty file)."""
    with open(path) as f:
        return yaml.safe_load(f) or {}
