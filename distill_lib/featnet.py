"""Pretrained feature nets for class centralization (CC).

CC measures the spread of a class's synthetic images in the embedding of a network *trained on the real training
set* (the paper uses ResNet18s trained 40 epochs, one drawn at random per iteration). Pretraining is the expensive
part, so each net is cached on disk under its full spec; a pool of nets is then held in memory and sampled per
iteration, never reloaded.
"""
from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import seeding
from .cache import DiskCache
from .data import RealData
from .files import BadFileError, first_line
from .models import get_model
from .train import TrainSpec, accuracy, train_classifier


@dataclass(frozen=True)
class FeatNetSpec:
    """How one feature net is pretrained: architecture, budget, training subset and seed."""

    arch: str = "resnet18"
    epochs: int = 2
    per_class: int | None = None  # None: the whole training set
    batch_size: int = 128
    lr: float = 0.01
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"feature-net epochs must be >= 1, got {self.epochs}")


def pretrain(data: RealData, spec: FeatNetSpec, device="cpu", progress: bool = False) -> tuple[nn.Module, float]:
    """A feature net trained on ``data``'s training set (disk-cached by spec and data); returns (net, test accuracy).

    The accuracy is measured on ``data``'s test split, which is a validation split when the caller passes one.
    """
    key = cache_key(data, spec)
    cache = DiskCache("featnet")
    cached = cache.get_or_compute(key, lambda: _train(data, spec, progress))
    net = _build(data, spec)
    try:
        net.load_state_dict(cached["state_dict"])
        return _freeze(net.to(device)), float(cached["accuracy"])
    except (KeyError, TypeError, RuntimeError) as err:  # an entry written for another net under the same key
        problem = f"holds no {spec.arch} feature net for {data.name!r} ({type(err).__name__}: {first_line(err)})"
        raise BadFileError(cache.path(key), f"{problem}; delete it to retrain") from None


def cache_key(data: RealData, spec: FeatNetSpec) -> dict:
    """What a pretrained feature net is a function of: the data it learnt from and its spec."""
    return {"data": data.name, "source": data.source, "n_train": len(data.x_train), **asdict(spec)}


def _build(data: RealData, spec: FeatNetSpec) -> nn.Module:
    return get_model(spec.arch, data.channels, data.num_classes, data.image_size)


def _train(data: RealData, spec: FeatNetSpec, progress: bool) -> dict:
    net = _build(data, spec)
    net.reset_parameters(seeding.generator(spec.seed, seeding.FEATNET, 0))
    train = data.subset(spec.per_class, seed=spec.seed) if spec.per_class else data
    x, y = train.train_tensors()
    if progress:  # the cost up front: on the full training set of a large data set this is the longest step
        batches = spec.epochs * math.ceil(len(x) / spec.batch_size)
        tqdm.write(f"pretraining a {spec.arch} feature net (seed {spec.seed}) on {len(x)} images for {spec.epochs} "
                   f"epochs ({batches} batches of {spec.batch_size}); cached in {DiskCache('featnet').dir} for later "
                   f"runs", file=sys.stderr)
    train_classifier(net, x, y, TrainSpec(epochs=spec.epochs, lr=spec.lr, batch_size=spec.batch_size),
                     seeding.generator(spec.seed, seeding.FEATNET, 1), progress=progress and f"featnet {spec.arch}")
    return {"state_dict": net.state_dict(), "accuracy": accuracy(net, *data.test_tensors())}


def _freeze(net: nn.Module) -> nn.Module:
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


class FeatNetPool:
    """K pretrained nets (seeds spec.seed .. spec.seed + K - 1) held in memory; one is drawn per iteration."""

    def __init__(self, data: RealData, spec: FeatNetSpec, size: int, device="cpu", progress: bool = False):
        if size < 1:
            raise ValueError(f"feature-net pool size must be >= 1, got {size}")
        pretrained = [pretrain(data, member, device, progress) for member in self.specs(spec, size)]
        self.nets = [net for net, _ in pretrained]
        self.accuracies = [acc for _, acc in pretrained]

    @staticmethod
    def specs(spec: FeatNetSpec, size: int) -> list[FeatNetSpec]:
        """The pool's members: ``spec`` with seeds spec.seed .. spec.seed + size - 1."""
        return [replace(spec, seed=spec.seed + k) for k in range(size)]

    def sample(self, generator: torch.Generator) -> nn.Module:
        return self.nets[int(torch.randint(len(self.nets), (1,), generator=generator))]

