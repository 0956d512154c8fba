"""CoOp's image transforms at the backbone's resolution and normalisation."""

from __future__ import annotations

import zlib

import torch
from torchvision import transforms as T

BICUBIC = T.InterpolationMode.BICUBIC


class GaussianNoise:
    """Adds N(0, std²) to a normalised image tensor (the attention-MMA authors' noisy-image study).

    Training noise (`fixed=False`) is drawn from torch's global generator, which the trainer reseeds every
    epoch: a fresh draw each time an image is loaded, the same draws on a rerun. Evaluation noise
    (`fixed=True`) is a function of the image alone (its generator is seeded by a checksum of the clean
    tensor), so a test image gets the same noise whatever its batch, loader worker or run order."""

    def __init__(self, std: float, fixed: bool = False):
        self.std, self.fixed = float(std), fixed

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.std == 0:
            return image
        if self.fixed:
            generator = torch.Generator().manual_seed(
                zlib.crc32(image.contiguous().numpy().tobytes())
            )
            noise = torch.randn(image.shape, generator=generator, dtype=image.dtype)
        else:
            noise = torch.randn(image.shape, dtype=image.dtype)
        return image + self.std * noise

    def __repr__(self) -> str:
        return f"GaussianNoise(std={self.std}, fixed={self.fixed})"


def train_transform(
    size: int, mean, std, augment: bool = True, noise_std: float = 0.0
) -> T.Compose:
    """Random resized crop (scale 0.08-1) and flip, bicubic, then CLIP's normalisation (then noise, if any)."""
    if not augment:
        steps = [T.Resize(size, interpolation=BICUBIC), T.CenterCrop(size)]
    else:
        steps = [
            T.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=BICUBIC),
            T.RandomHorizontalFlip(),
        ]
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    if noise_std:
        steps.append(GaussianNoise(noise_std))
    return T.Compose(steps)


def test_transform(size: int, mean, std, noise_std: float = 0.0) -> T.Compose:
    """Resize the short side to `size` (bicubic), center crop, normalise (then fixed per-image noise, if any)."""
    steps = [
        T.Resize(size, interpolation=BICUBIC),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ]
    if noise_std:
        steps.append(GaussianNoise(noise_std, fixed=True))
    return T.Compose(steps)
