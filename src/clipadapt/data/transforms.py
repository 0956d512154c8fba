"""CoOp's image transforms at the backbone's resolution and normalisation."""

from __future__ import annotations

from torchvision import transforms as T

BICUBIC = T.InterpolationMode.BICUBIC


def train_transform(size: int, mean, std, augment: bool = True) -> T.Compose:
    """Random resized crop (scale 0.08-1) and flip, bicubic, then CLIP's normalisation."""
    if not augment:
        return test_transform(size, mean, std)
    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def test_transform(size: int, mean, std) -> T.Compose:
    """Resize the short side to `size` (bicubic), center crop, normalise."""
    return T.Compose([
        T.Resize(size, interpolation=BICUBIC),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
