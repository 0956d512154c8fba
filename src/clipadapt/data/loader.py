"""Torch datasets over lists of Datum, with clear errors on unreadable images."""

from __future__ import annotations

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..errors import UnreadableImageError
from .datum import Datum


def load_image(path: str) -> Image.Image:
    """Open an image as RGB, naming the path if it cannot be read."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as err:
        raise UnreadableImageError(path, type(err).__name__) from None


class ImageItems(Dataset):
    """(image tensor, label, index) for each Datum."""

    def __init__(self, items: list[Datum], transform):
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        return self.transform(load_image(item.impath)), item.label, index


def make_loader(items: list[Datum], transform, batch_size: int, shuffle: bool = False,
                workers: int = 0, seed: int = 0, drop_last: bool = False) -> DataLoader:
    """A DataLoader whose shuffling order depends only on `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(ImageItems(items, transform), batch_size=batch_size, shuffle=shuffle,
                      num_workers=workers, generator=generator, drop_last=drop_last,
                      persistent_workers=False)
