"""Torch datasets over lists of Datum, with clear errors on unreadable images."""

from __future__ import annotations

import os

import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from ..errors import UnreadableImageError
from .datum import Datum


def load_image(path: str) -> Image.Image:
    """Open an image as RGB, naming the path if it cannot be read."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as err:
        raise UnreadableImageError(path, type(err).__name__) from None


MAX_DEFAULT_WORKERS = 8


def resolve_workers(workers: int | None) -> int:
    """Data loading processes: `workers`, or by default one per core, at most MAX_DEFAULT_WORKERS."""
    if workers is not None:
        return workers
    return min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1)


class ImageItems(Dataset):
    """(image tensor, label, index) for each Datum.

    An index may come as (seed, index): the transform's random draws are then seeded from both, so
    an image's augmentation depends on the epoch's seed and the image only, not on which worker
    process or in which order it is loaded."""

    def __init__(self, items: list[Datum], transform):
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            seed, index = key
            image = load_image(self.items[index].impath)
            with torch.random.fork_rng(devices=[]):  # leaves the caller's generator where it was
                torch.manual_seed((seed * 2**32 + index) % 2**63)
                tensor = self.transform(image)
            return tensor, self.items[index].label, index
        item = self.items[key]
        return self.transform(load_image(item.impath)), item.label, key


class EpochShuffle(Sampler):
    """Each epoch a permutation drawn from that epoch's seed (`set_epoch_seed`), yielded as (seed, index).

    The order is the one a DataLoader with `shuffle=True` and a generator seeded with the same seed
    draws; one sampler serves every epoch, so its loader can keep its worker processes."""

    def __init__(self, size: int, seed: int = 0):
        self.size, self.seed = size, seed

    def set_epoch_seed(self, seed: int) -> None:
        """The seed of the next epoch's order and augmentation draws."""
        self.seed = seed

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed)
        # A shuffled DataLoader draws its workers' base seed from the generator before the order.
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        order = torch.randperm(self.size, generator=generator).tolist()
        return iter([(self.seed, index) for index in order])


def make_loader(
    items: list[Datum],
    transform,
    batch_size: int,
    shuffle: bool = False,
    workers: int | None = 0,
    seed: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader whose shuffling order depends only on `seed` (`workers` None: one per core, capped)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        ImageItems(items, transform),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=resolve_workers(workers),
        generator=generator,
        drop_last=drop_last,
        persistent_workers=False,
        pin_memory=pin_memory,
    )


def make_epoch_loader(
    items: list[Datum],
    transform,
    batch_size: int,
    workers: int | None = None,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> tuple[DataLoader, EpochShuffle]:
    """A training loader for every epoch of a run, and its sampler (set its seed before each epoch).

    Worker processes persist across epochs; each image's augmentation is seeded from (epoch seed,
    image), so the batches are the same with any number of workers and after a resume."""
    sampler = EpochShuffle(len(items))
    workers = resolve_workers(workers)
    # Its own generator: a DataLoader without one draws its worker seed from the global generator, at
    # the first epoch only when workers persist, which would make a resumed run's draws differ.
    return DataLoader(
        ImageItems(items, transform),
        batch_sampler=BatchSampler(sampler, batch_size, drop_last),
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(0),
    ), sampler
