"""The tiny CLIP shipped inside the package: its weights file format, its loader and its identity.

The format lives here, with the loader, so that loading a backbone never imports the pretraining
script (`clipadapt.synthetic.pretrain`), which sits above the library and uses it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .errors import ClipadaptError
from .fileio import atomic_path, file_digest

WEIGHTS_DIR = Path(__file__).parent / "weights"
SHIPPED_NAME = "synthetic"
SHIPPED_CONFIG = "clipadapt-synthetic"
MODEL_CONFIG_DIR = (
    Path(__file__).parent / "model_configs"
)  # clipadapt's own open_clip configs (tiny CLIPs)
SHIPPED_CONFIG_FILE = MODEL_CONFIG_DIR / f"{SHIPPED_CONFIG}.json"
SHIPPED_WEIGHTS = WEIGHTS_DIR / "synthetic-clip.safetensors"
SHIPPED_RECORD = WEIGHTS_DIR / "synthetic-clip.json"
SHIPPED_TAGS = ("shipped", "default", "synthetic", None, "")
WEIGHTS_FORMAT = "clipadapt-synthetic-clip/1"


def is_shipped(name: str) -> bool:
    """Whether a backbone name means the shipped tiny CLIP."""
    return name in (SHIPPED_NAME, SHIPPED_CONFIG)


DEFAULT_BACKBONE = SHIPPED_NAME  # the CLI's and the Python API's backbone when none is named
DEFAULT_WEIGHTS = "default"  # build_model's pretrained when none is named: see default_pretrained


def default_pretrained(backbone: str) -> str:
    """The weights a backbone gets when none are named: the shipped ones for 'synthetic', OpenAI's otherwise."""
    return "shipped" if is_shipped(backbone) else "openai"


def shipped_record() -> dict:
    """What was measured when the shipped weights were made (zero-shot accuracies, training settings)."""
    with open(SHIPPED_RECORD) as f:
        return json.load(f)


def _weights_path(pretrained: str | None) -> Path:
    return SHIPPED_WEIGHTS if pretrained in SHIPPED_TAGS else Path(str(pretrained))


def shipped_identity(pretrained: str | None) -> str:
    """The identity `load_shipped(pretrained)` gives its model, without building the model."""
    if pretrained == "none":
        return f"{SHIPPED_NAME}/none"
    path = _weights_path(pretrained)
    if not path.is_file():
        raise ClipadaptError(
            f"weights of the synthetic backbone not found at '{path}' (use --pretrained shipped "
            "for the weights shipped with clipadapt, or `clipadapt pretrain-synthetic --install`)"
        )
    return f"{SHIPPED_NAME}/sha256:{file_digest(path)}"


def shipped_config() -> dict:
    """The open_clip model config of the shipped tiny CLIP (read from its file: no registry involved)."""
    with open(SHIPPED_CONFIG_FILE) as f:
        return json.load(f)


def create_shipped_architecture():
    """The shipped tiny CLIP's architecture with its seed-0 random weights (before any weights are loaded)."""
    # Deferred: loads torch, which this module's import must not.
    import open_clip
    import torch
    from open_clip.transform import PreprocessCfg

    # Built from its config rather than through open_clip.create_model, whose "No pretrained weights
    # loaded ... initialized randomly" goes to the root logger (configuring it on first use) and is
    # untrue here: the shipped weights are loaded next. Same parameters, drawn from the same seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.CLIP(**shipped_config())
    open_clip.set_model_preprocess_cfg(
        model, dataclasses.asdict(PreprocessCfg(size=model.visual.image_size))
    )
    return model


def shipped_tokenizer():
    """The tokenizer of the shipped tiny CLIP: open_clip's BPE at the config's context length."""
    # Deferred: loads torch, which this module's import must not.
    import open_clip

    # As open_clip.get_tokenizer would build it for this config, without its root-logger messages.
    return open_clip.SimpleTokenizer(context_length=shipped_config()["text_cfg"]["context_length"])


def export_weights(model, token_ids: list[int], path: str) -> dict:
    """Save fp16 weights with only the given token-embedding rows (the world's vocabulary); returns the metadata."""
    # Deferred: loads torch, which this module's import must not.
    import torch
    from safetensors.torch import save_file

    state = {
        k: v.detach().half().contiguous()
        for k, v in model.state_dict().items()
        if k != "token_embedding.weight"
    }
    state["token_embedding.rows"] = (
        model.token_embedding.weight.detach()[token_ids].half().contiguous()
    )
    state["token_embedding.ids"] = torch.tensor(token_ids, dtype=torch.int64)
    meta = {
        "config": SHIPPED_CONFIG,
        "format": WEIGHTS_FORMAT,
        "vocabulary_tokens": str(len(token_ids)),
    }
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata=meta)
    return meta


def load_exported(path: str):
    """Build the tiny CLIP and load exported weights (tokens outside the vocabulary keep their init)."""
    # Deferred: loads torch, which this module's import must not.
    from safetensors.torch import load_file

    try:
        state = load_file(path)
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise ClipadaptError(
            f"'{path}' is not a synthetic-CLIP weights file (safetensors): {err}"
        ) from None
    if "token_embedding.ids" not in state:
        raise ClipadaptError(
            f"'{path}' is not a synthetic-CLIP weights file (format {WEIGHTS_FORMAT})"
        )
    model = create_shipped_architecture()
    table = model.token_embedding.weight.detach().clone()
    table[state.pop("token_embedding.ids")] = state.pop("token_embedding.rows").float()
    state = {k: v.float() for k, v in state.items()}
    state["token_embedding.weight"] = table
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_shipped(pretrained: str | None):
    """(model, identity) for the shipped tiny CLIP: its weights, an exported file, or random ('none')."""
    identity = shipped_identity(pretrained)
    if pretrained == "none":
        return create_shipped_architecture(), identity
    return load_exported(str(_weights_path(pretrained))), identity
