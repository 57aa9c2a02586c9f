"""The synthetic set: what distillation produces and what evaluation, files, analysis and continual learning take.

Images are stored normalised (the space the networks see). With IDM's partitioning (``factor`` > 1) each stored image
holds a factor x factor grid of sub-images; :meth:`SyntheticSet.decoded` gives the images a student actually trains
on, so every consumer can ignore how the set is stored.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .cache import canonical
from .files import BadFileError, atomic_save, load_torch

FORMAT_VERSION = 1


def check_factor(factor: int, image_size: tuple[int, int], what: str = "images") -> None:
    """Partitioning needs whole tiles: ``factor`` >= 1 must divide both sides of the images."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    if image_size[0] % factor or image_size[1] % factor:
        divisors = [f for f in range(1, min(image_size) + 1) if image_size[0] % f == 0 and image_size[1] % f == 0]
        raise ValueError(f"factor {factor} does not divide the {image_size[0]}x{image_size[1]} {what}; "
                         f"use one of {divisors}")


def decode_partitions(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Split each image (N, C, H, W) into factor x factor tiles (row-major) and upsample each back to (H, W).

    Returns (N * factor^2, C, H, W), tiles of image 0 first. factor 1 returns the images unchanged.
    """
    n, c, h, w = images.shape
    check_factor(factor, (h, w))
    if factor == 1:
        return images
    tiles = images.reshape(n, c, factor, h // factor, factor, w // factor).permute(0, 2, 4, 1, 3, 5)
    tiles = tiles.reshape(n * factor * factor, c, h // factor, w // factor)
    return F.interpolate(tiles, size=(h, w), mode="bilinear", align_corners=False)


def encode_partitions(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Pack full-size images (N * factor^2, C, H, W) into N stored images, each a factor x factor grid of them.

    Each image is downscaled to (H / factor, W / factor) by area averaging and placed row-major, so tile k of stored
    image i is image i * factor^2 + k: ``decode_partitions`` gives back the images in the same order, at 1/factor
    resolution. This is how IDM initialises a partitioned synthetic set from real images.
    """
    n, c, h, w = images.shape
    check_factor(factor, (h, w))
    if factor == 1:
        return images
    if n % (factor * factor):
        raise ValueError(f"{n} images do not fill stored images of {factor}x{factor} tiles")
    tiles = F.interpolate(images, size=(h // factor, w // factor), mode="area")
    tiles = tiles.reshape(n // factor ** 2, factor, factor, c, h // factor, w // factor).permute(0, 3, 1, 4, 2, 5)
    return tiles.reshape(n // factor ** 2, c, h, w)


@dataclass(eq=False)
class SyntheticSet:
    """Synthetic images (normalised, float32) with labels, provenance and the history of the run that made them."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str]
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    factor: int = 1

    def __post_init__(self):
        if self.images.ndim != 4 or len(self.images) != len(self.labels):
            raise ValueError(f"images {tuple(self.images.shape)} and labels {tuple(self.labels.shape)} do not match")
        self.images = self.images.detach().float().cpu()
        self.labels = self.labels.detach().long().cpu()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def ipc(self) -> int:
        """Stored images per class (the storage budget)."""
        return len(self.labels) // self.num_classes

    def decoded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) a student network trains on: factor^2 upsampled tiles per stored image."""
        images = decode_partitions(self.images, self.factor)
        return images, self.labels.repeat_interleave(self.factor ** 2)

    def for_display(self) -> torch.Tensor:
        """Stored images mapped back to [0, 1] for plotting."""
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (self.images * std + mean).clamp(0, 1)

    def metadata(self) -> dict:
        return {"format_version": FORMAT_VERSION, "mean": list(self.mean), "std": list(self.std),
                "classes": list(self.classes), "config": canonical(self.config),
                "history": canonical(self.history), "factor": self.factor}

    def save(self, path: str | os.PathLike) -> Path:
        """One file of tensors plus a JSON string of metadata; readable with torch.load(weights_only=True)."""
        path = Path(path)
        atomic_save({"images": self.images, "labels": self.labels, "metadata": json.dumps(self.metadata())}, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SyntheticSet":
        """Read a file written by :meth:`save`; anything else (or non-finite pixels) is a :class:`BadFileError`."""
        blob = load_torch(path, "synthetic set file")
        if isinstance(blob, dict) and {"config", "iteration", "optimizer"} <= blob.keys():
            raise BadFileError(path, "is a distillation checkpoint, not a synthetic set (the set is the file "
                                     "written by 'distill --out')")
        if not isinstance(blob, dict) or not {"images", "labels", "metadata"} <= blob.keys():
            raise BadFileError(path, "is not a saved SyntheticSet (needs images, labels and metadata)")
        try:
            meta = json.loads(blob["metadata"])
            if meta.get("format_version") != FORMAT_VERSION:
                raise BadFileError(path, f"has format version {meta.get('format_version')}, expected "
                                         f"{FORMAT_VERSION}")
            syn = cls(blob["images"], blob["labels"], tuple(meta["mean"]), tuple(meta["std"]), meta["classes"],
                      meta["config"], meta["history"], meta["factor"])
        except BadFileError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as err:
            raise BadFileError(path, f"holds a damaged SyntheticSet ({type(err).__name__}: {err})") from None
        problem = nonfinite_problem(syn.images)
        if problem:
            raise BadFileError(path, problem)
        return syn


def nonfinite_problem(images: torch.Tensor) -> str | None:
    """What is wrong with images holding NaN or infinity (a network trained on them learns nothing), else None."""
    bad = ~torch.isfinite(images)
    if not bad.any():
        return None
    return (f"holds {int(bad.sum())} non-finite pixel values (NaN or infinity) in {int(bad.flatten(1).any(1).sum())} "
            f"of {len(images)} images: the run that made them diverged")
