"""Pretrained feature nets for class centralization (CC).

CC measures the spread of a class's synthetic images in the embedding of a network *trained on the real training
set*. Pretraining is the expensive part, so each net is cached on disk under its full spec, next to its test
accuracy; a pool of nets is then held in memory and sampled per iteration, never reloaded.

How a net is trained comes in named recipes (:data:`RECIPES`, see :func:`recipe`):

- ``default``: a ResNet18 trained 2 epochs with DSA and a step decay: cheap, and weak (the project's original
  setting; its nets keep their cache entries).
- ``paper``: the CVPR 2024 authors' feature nets: ResNet18 (instance norm, 3x3 stride-1 stem) on the full training
  set, 40 epochs of SGD at a constant lr 0.01 (momentum 0.9, weight decay 5e-4), batch 256, no augmentation.
- ``convnet``: the DM ConvNet (width 128, depth 3, instance norm) on the full training set for a few epochs, batch
  256, no augmentation, lr x 0.1 after half the epochs: a full-data net at a fraction of ``paper``'s cost per epoch.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import augment, distributed, seeding
from .cache import DiskCache
from .data import RealData
from .files import BadFileError, first_line
from .models import get_model
from .train import TrainSpec, accuracy, machine, resolve_device, train_classifier

# lr schedules of a feature net: the factor applied to the lr after half the epochs (TrainSpec's step decay).
SCHEDULES = {"step": 0.1, "constant": 1.0}
# What the original specs did, before the schedule and the augmentation were settings: at these values the two
# fields stay out of the cache key, so nets pretrained then are found again.
_LEGACY = {"schedule": "step", "dsa_strategy": augment.DEFAULT_STRATEGY}


@dataclass(frozen=True)
class FeatNetSpec:
    """How one feature net is pretrained: architecture, budget, training subset, schedule, augmentation and seed.

    Momentum 0.9 and weight decay 5e-4 are TrainSpec's, for every spec. Build one from a named recipe with
    :func:`recipe`; the field defaults are the ``default`` recipe.
    """

    arch: str = "resnet18"
    epochs: int = 2
    per_class: int | None = None  # None: the whole training set
    batch_size: int = 128
    lr: float = 0.01
    seed: int = 0
    schedule: str = "step"  # a key of SCHEDULES
    dsa_strategy: str = augment.DEFAULT_STRATEGY  # DSA on every training batch, or "none"

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"feature-net epochs must be >= 1, got {self.epochs}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"feature-net schedule must be one of {tuple(SCHEDULES)}, got {self.schedule!r}")
        augment.parse_strategy(self.dsa_strategy)

    def identity(self) -> dict:
        """The spec as a cache key: every field, less the schedule and augmentation at their original values."""
        values = asdict(self)
        for name, legacy in _LEGACY.items():
            if values[name] == legacy:
                del values[name]
        return values

    def train_spec(self) -> TrainSpec:
        """The training loop's settings for this net (distill_lib.train): the spec's budget, schedule and DSA."""
        return TrainSpec(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                         lr_decay=SCHEDULES[self.schedule], dsa_strategy=self.dsa_strategy)


RECIPES = {
    "default": FeatNetSpec(),
    "paper": FeatNetSpec(arch="resnet18", epochs=40, batch_size=256, schedule="constant", dsa_strategy="none"),
    "convnet": FeatNetSpec(arch="convnet", epochs=6, batch_size=256, schedule="step", dsa_strategy="none"),
}


def recipe(name: str, **overrides) -> FeatNetSpec:
    """The spec of recipe ``name`` (a key of RECIPES) with ``overrides`` (e.g. ``epochs``, ``seed``) applied."""
    if name not in RECIPES:
        raise ValueError(f"unknown feature-net recipe {name!r}; expected one of {tuple(RECIPES)}")
    return replace(RECIPES[name], **overrides)


def pretrain(data: RealData, spec: FeatNetSpec, device="cpu", progress: bool = False) -> tuple[nn.Module, float]:
    """A feature net trained on ``data``'s training set (disk-cached by spec and data); returns (net, test accuracy).

    The accuracy is measured on ``data``'s test split, which is a validation split when the caller passes one.
    """
    cached = pretrained(data, spec, progress)
    net = _build(data, spec)
    try:
        net.load_state_dict(cached["state_dict"])
        return _freeze(net.to(device)), float(cached["accuracy"])
    except (KeyError, TypeError, RuntimeError) as err:  # an entry written for another net under the same key
        problem = f"holds no {spec.arch} feature net for {data.name!r} ({type(err).__name__}: {first_line(err)})"
        path = DiskCache("featnet").path(cache_key(data, spec))
        raise BadFileError(path, f"{problem}; delete it to retrain") from None


def pretrained(data: RealData, spec: FeatNetSpec, progress: bool = False) -> dict:
    """The cache entry of ``spec``'s net on ``data``, trained first when missing: ``state_dict``, ``accuracy`` (on
    the test split) and ``seconds`` (training wall-clock; absent from entries written before it was recorded)."""
    return DiskCache("featnet").get_or_compute(cache_key(data, spec), lambda: _train(data, spec, progress))


def cache_key(data: RealData, spec: FeatNetSpec) -> dict:
    """What a pretrained feature net is a function of: the data it learnt from and its spec."""
    return {"data": data.name, "source": data.source, "n_train": len(data.x_train), **spec.identity()}


def _build(data: RealData, spec: FeatNetSpec) -> nn.Module:
    return get_model(spec.arch, data.channels, data.num_classes, data.image_size)


def _train(data: RealData, spec: FeatNetSpec, progress: bool) -> dict:
    net = _build(data, spec)
    net.reset_parameters(seeding.generator(spec.seed, seeding.FEATNET, 0))
    train = data.subset(spec.per_class, seed=spec.seed) if spec.per_class else data
    device = distributed.rank_device(resolve_device("auto"))  # a GPU when there is one: ResNet18s are long on CPU
    net.to(device)
    x, y = train.train_tensors(device)
    if progress:  # the cost up front: on the full training set of a large data set this is the longest step
        batches = spec.epochs * math.ceil(len(x) / spec.batch_size)
        tqdm.write(f"pretraining a {spec.arch} feature net (seed {spec.seed}) on {len(x)} images for {spec.epochs} "
                   f"epochs ({batches} batches of {spec.batch_size}); cached in {DiskCache('featnet').dir} for later "
                   f"runs", file=sys.stderr)
    start = time.perf_counter()
    train_classifier(net, x, y, spec.train_spec(), seeding.generator(spec.seed, seeding.FEATNET, 1),
                     progress=progress and f"featnet {spec.arch}")
    seconds = time.perf_counter() - start
    return {"state_dict": {k: v.cpu() for k, v in net.state_dict().items()},
            "accuracy": accuracy(net, *data.test_tensors(device)), "seconds": seconds, "machine": machine(device)}


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
        self.nets, self.accuracies = [], []
        for k, member in enumerate(self.specs(spec, size)):
            net, acc = pretrain(data, member, device, progress)
            self.nets.append(net)
            self.accuracies.append(acc)
            if progress:  # what CC will pull towards: a net that cannot tell the classes apart gives it nothing
                tqdm.write(f"feature net {k + 1}/{size} ({member.arch}, seed {member.seed}): test accuracy "
                           f"{acc:.2%}", file=sys.stderr)

    @staticmethod
    def specs(spec: FeatNetSpec, size: int) -> list[FeatNetSpec]:
        """The pool's members: ``spec`` with seeds spec.seed .. spec.seed + size - 1."""
        return [replace(spec, seed=spec.seed + k) for k in range(size)]

    def sample(self, generator: torch.Generator) -> nn.Module:
        return self.nets[int(torch.randint(len(self.nets), (1,), generator=generator))]

