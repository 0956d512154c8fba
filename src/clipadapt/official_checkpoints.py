"""Checkpoints saved by the methods' official code (Dassl's `torch.save` format): one reader and one
fit check, which each method's importer combines with its own key names."""

from __future__ import annotations

import torch
from torch import nn

from .errors import ClipadaptError


def read_saved_object(path: str, what: str, kind: str = "checkpoint") -> object:
    """What an official `torch.save` file holds (`what` names the method in errors, `kind` the file)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ClipadaptError(f"{what} {kind} '{path}' does not exist") from None
    except IsADirectoryError:
        raise ClipadaptError(f"{what} {kind} '{path}' is a folder, not a {kind} file") from None
    except Exception as err:  # torch raises many types for a file that is not a checkpoint
        raise ClipadaptError(
            f"'{path}' is not a readable {what} {kind} (torch.save format): {err}"
        ) from None


def read_state_dict(path: str, what: str) -> dict[str, torch.Tensor]:
    """The state dict of an official checkpoint (`what` names it in errors, e.g. 'MMA'), 'module.' prefixes dropped."""
    checkpoint = read_saved_object(path, what)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ClipadaptError(f"'{path}' holds no state dict")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def check_state_fits(method: nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    """Refuse converted official tensors whose keys or shapes do not fit `method` (built on the target backbone)."""
    ours = method.state_dict()
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    if missing or unexpected:
        raise ClipadaptError(
            f"'{path}' does not fit this model's {method.name} parameters: missing {missing[:4]}, "
            f"unexpected {unexpected[:4]} (check the blocks and widths it was trained with)"
        )
    for key, value in state.items():
        if value.shape != ours[key].shape:
            raise ClipadaptError(
                f"'{path}': '{key}' has shape {tuple(value.shape)}, the model expects "
                f"{tuple(ours[key].shape)} (is it the same backbone?)"
            )
