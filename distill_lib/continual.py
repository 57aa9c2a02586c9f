"""Class-incremental learning with a memory of a fixed budget per class (the GDumb-style protocol of the DM paper).

Classes arrive in tasks (:func:`make_scenario`). After each task a memory of ``ipc`` images per class of that task is
built (:func:`build_memory`: a random real subset, herding, DM or DM+CC+CM) and added to the memories of earlier
tasks; a *fresh* network is then trained from scratch on the whole memory and tested on the test images of the
classes seen so far (:func:`run_continual`). Memories are :class:`SyntheticSet` s whose labels are the data set's
class indices, so memories of different tasks concatenate (:func:`memory_union`) and train like any synthetic set.
"""
from __future__ import annotations

import dataclasses
import hashlib
import operator
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from . import seeding
from .cache import DiskCache, canonical
from .data import RealData
from .distill import DistillConfig
from .herding import embed_all, herding
from .options import RunOptions
from .runner import distill
from .models import MODEL_NAMES, get_model
from .synthetic import SyntheticSet
from .train import TrainSpec, accuracy, resolve_device, train_classifier

# IDM hook: IDM variants belong in BUILDERS and DISTILLED, with Builder.distill_config switching IDM on. Nothing else
# changes: a distilled memory keeps its SyntheticSet's partition factor through the cache, and memory_union and the
# learner train on the decoded images.
BUILDERS = ("random", "herding", "dm", "dm_cc_cm")
DISTILLED = ("dm", "dm_cc_cm")


# ---------------------------------------------------------------------------------------------------------------
# Scenarios

@dataclass(frozen=True)
class Scenario:
    """Classes ``0 .. num_classes - 1`` split into tasks; every class belongs to exactly one task.

    ``tasks`` is stored as a tuple of tuples of ints, so a validated scenario cannot be changed afterwards (a list
    appended to later would break the partition) and scenarios hash, e.g. as dict keys.
    """

    num_classes: int
    tasks: tuple[tuple[int, ...], ...]

    def __post_init__(self):
        try:
            tasks = tuple(tuple(operator.index(c) for c in task) for task in self.tasks)
        except TypeError:
            raise ValueError(f"tasks must be sequences of integer class indices, got {self.tasks!r}") from None
        object.__setattr__(self, "tasks", tasks)
        flat = [c for task in self.tasks for c in task]
        if not self.tasks or any(not task for task in self.tasks) or sorted(flat) != list(range(self.num_classes)):
            raise ValueError(f"tasks {self.tasks} are not a partition of classes 0..{self.num_classes - 1} "
                             "into non-empty tasks")

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def seen(self, t: int) -> list[int]:
        """The classes of tasks 0..t, in the order they arrived."""
        if not 0 <= t < self.num_tasks:
            raise ValueError(f"task {t} out of range 0..{self.num_tasks - 1}")
        return [c for task in self.tasks[:t + 1] for c in task]


def make_scenario(num_classes: int, num_tasks: int, seed: int = 0) -> Scenario:
    """A seeded random class order cut into ``num_tasks`` tasks whose sizes differ by at most one (larger first)."""
    if not 1 <= num_tasks <= num_classes:
        raise ValueError(f"num_tasks must be in 1..num_classes={num_classes}, got {num_tasks}")
    order = torch.randperm(num_classes, generator=seeding.generator(seed, seeding.CLASS_ORDER))
    return Scenario(num_classes, [part.tolist() for part in order.tensor_split(num_tasks)])


# ---------------------------------------------------------------------------------------------------------------
# Memory builders

@dataclass(frozen=True)
class Builder:
    """A memory builder by name, with the settings that builder reads (the others are ignored).

    ``dm_config``: base settings of ``dm`` / ``dm_cc_cm``; the builder sets dataset, ipc, seed, and cc = cm = (name is
    ``dm_cc_cm``). ``dm_options``: how they run (device, compile; not part of the cache key). ``feature_model``: the
    architecture of herding's seeded random feature net, unless ``feature_net`` gives a net (e.g. a pretrained one)
    whose ``.embed`` herding uses instead.
    """

    name: str
    dm_config: DistillConfig = DistillConfig()
    dm_options: RunOptions = RunOptions()
    feature_model: str = "convnet"
    feature_net: nn.Module | None = None

    def __post_init__(self):
        if self.name not in BUILDERS:
            raise ValueError(f"unknown memory builder {self.name!r}; known: {', '.join(BUILDERS)}")
        if self.feature_model not in MODEL_NAMES:
            raise ValueError(f"unknown feature model {self.feature_model!r}; known: {', '.join(MODEL_NAMES)}")

    def distill_config(self, dataset: str, ipc: int, seed: int) -> DistillConfig:
        both = self.name == "dm_cc_cm"
        return dataclasses.replace(self.dm_config, dataset=dataset, ipc=ipc, seed=seed, cc=both, cm=both)

    def settings(self, dataset: str, ipc: int, seed: int) -> dict:
        """What, besides data, classes, ipc and seed, determines this builder's memory (part of the cache key)."""
        if self.name in DISTILLED:
            return self.distill_config(dataset, ipc, seed).identity()  # DM's identity leaves out IDM's fields
        if self.name == "herding":
            return {"feature_model": self.feature_model,
                    "feature_net": None if self.feature_net is None else _digest(self.feature_net)}
        return {}


def _digest(net: nn.Module) -> str:
    """sha256 of a net's class and state, so a given feature net can key the cache."""
    h = hashlib.sha256(type(net).__name__.encode())
    for name, tensor in net.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# Each builder returns (stored images, class-major, ``ipc`` per class; partition factor of those images).

def _random(data: RealData, classes: list[int], ipc: int, seed: int, builder: Builder, progress: bool):
    """The same per-class draws as :func:`evaluate.random_subset`, so class c's memory is that baseline's rows."""
    images = [data.sample_real(c, ipc, seeding.generator(seed, seeding.RANDOM_SUBSET, c)) for c in classes]
    return torch.cat(images), 1


@torch.no_grad()
def _herding(data: RealData, classes: list[int], ipc: int, seed: int, builder: Builder, progress: bool):
    """Herding per class on L2-normalised embeddings (as iCaRL) of a fixed net: the given one or a seeded random one."""
    net = builder.feature_net
    if net is None:
        net = get_model(builder.feature_model, data.channels, data.num_classes, data.image_size)
        net.reset_parameters(seeding.generator(seed, seeding.HERDING))
    picked = []
    for c in classes:
        x = data.normalize(data.x_train[data.class_indices(c)])
        picked.append(x[herding(nn.functional.normalize(embed_all(net, x), dim=1), ipc)])
    return torch.cat(picked), 1


_BUILD = {"random": _random, "herding": _herding}  # real subsets; build_memory calls them one class at a time


def _distilled(data: RealData, ipc: int, seed: int, builder: Builder, progress: bool, checkpoint: Path):
    """DM (+CC+CM) on the whole data set; :func:`build_memory` caches it and serves each class its rows.

    ``Distiller`` always distils every class of its RealData (each needs >= ipc images, and models need >= 2
    classes), so a class group cannot be distilled on its own. It need not be: DM's loss is a sum over classes and
    every draw but the random net and augmentation family is keyed by class, so class c's images depend only on
    class c's real images (and the shared per-iteration nets) -- the rows of one whole-data run are exactly what a
    run per group would give, and a class's memory does not depend on how classes are grouped into tasks. Two
    couplings remain: the real batch is capped by the smallest class of the whole set, and CC's feature net is
    pretrained on the whole training set, as in the authors' code, so dm_cc_cm memories see later classes through it.

    The run writes ``checkpoint`` every 10 iterations and resumes from it, so an interrupted benchmark loses at most
    10 iterations; the file is removed once the run is done (its result is then cached).
    """
    syn = distill(builder.distill_config(data.name, ipc, seed), data, checkpoint=checkpoint, resume=True,
                  progress=progress, options=dataclasses.replace(builder.dm_options, checkpoint_every=10))
    checkpoint.unlink(missing_ok=True)
    return syn.images, syn.factor


def build_memory(data: RealData, classes, builder: str | Builder, ipc: int, seed: int = 0,
                 progress: bool = False) -> SyntheticSet:
    """``ipc`` training images per class of ``classes`` (sorted), labelled with their class indices in ``data``.

    Every builder makes a class's memory independently of the other classes (random draws and herding per class, DM
    rows of one whole-data distillation, see :func:`_distilled`). Memories are therefore cached on disk
    (``DiskCache("continual")``) per class, under the builder, its settings, the data set, the class, ipc and seed,
    and a group's memory is the concatenation of its classes': a class is built once, whichever task and class order
    it arrives in, and a hit returns the same tensors. A distilled memory keeps the partition factor of the set it
    came from (1 for DM).
    """
    builder = builder if isinstance(builder, Builder) else Builder(builder)
    classes = sorted(int(c) for c in classes)
    if not classes or len(set(classes)) != len(classes) or not 0 <= classes[0] <= classes[-1] < data.num_classes:
        raise ValueError(f"classes must be distinct indices in 0..{data.num_classes - 1}, got {classes}")
    smallest = min(classes, key=data.class_count)
    if not 1 <= ipc <= data.class_count(smallest):
        raise ValueError(f"ipc must be in 1..{data.class_count(smallest)} (training images of class {smallest}), "
                         f"got {ipc}")
    parts = [_class_memory(data, c, builder, ipc, seed, progress) for c in classes]
    labels = torch.tensor(classes).repeat_interleave(ipc)
    return SyntheticSet(torch.cat([part["images"] for part in parts]), labels, data.mean, data.std,
                        list(data.classes), _memory_key(data, classes, builder, ipc, seed), factor=parts[0]["factor"])


def _memory_key(data: RealData, classes: list[int], builder: Builder, ipc: int, seed: int) -> dict:
    # version: the layout of the stored value (2: images and partition factor), so older entries are never misread
    return {"method": "continual_memory", "version": 2, "builder": builder.name,
            "settings": builder.settings(data.name, ipc, seed), "dataset": data.name, "source": data.source,
            "n_train": len(data.x_train), "classes": classes, "ipc": ipc, "seed": seed}


def _class_memory(data: RealData, c: int, builder: Builder, ipc: int, seed: int, progress: bool) -> dict:
    """{"images", "factor"} of class ``c``'s memory, from the cache or built (distilled ones: from the whole run)."""
    cache = DiskCache("continual")

    def compute() -> dict:
        if builder.name not in DISTILLED:
            images, factor = _BUILD[builder.name](data, [c], ipc, seed, builder, progress)
            return {"images": images, "factor": factor}
        every = _memory_key(data, list(range(data.num_classes)), builder, ipc, seed)

        def distill_every_class() -> dict:
            images, factor = _distilled(data, ipc, seed, builder, progress, cache.path(every).with_suffix(".ckpt"))
            return {"images": images, "factor": factor}

        whole = cache.get_or_compute(every, distill_every_class)  # class-major: class c's rows are c*ipc..
        return {"images": whole["images"][c * ipc:(c + 1) * ipc], "factor": whole["factor"]}

    return cache.get_or_compute(_memory_key(data, [c], builder, ipc, seed), compute)


def memory_union(sets: list[SyntheticSet]) -> SyntheticSet:
    """The concatenation of memories of disjoint class groups over the same label space and normalisation."""
    if not sets:
        raise ValueError("memory_union needs at least one memory")
    first = sets[0]
    for s in sets[1:]:
        if (s.classes, s.mean, s.std, s.factor, s.images.shape[1:]) != (
                first.classes, first.mean, first.std, first.factor, first.images.shape[1:]):
            raise ValueError("memories differ in classes, normalisation, partition factor or image shape")
    groups = [set(s.labels.tolist()) for s in sets]
    if sum(map(len, groups)) != len(set().union(*groups)):
        raise ValueError("memories overlap in classes; a union would break the per-class budget")
    return SyntheticSet(torch.cat([s.images for s in sets]), torch.cat([s.labels for s in sets]), first.mean,
                        first.std, list(first.classes), {"method": "memory_union", "parts": [s.config for s in sets]},
                        factor=first.factor)


# ---------------------------------------------------------------------------------------------------------------
# The learner

@dataclass(frozen=True)
class ContinualResult:
    """Test accuracy (fraction) after each task, on the test images of the classes seen by then."""

    accuracies: tuple[float, ...]
    seen: tuple[tuple[int, ...], ...]
    config: dict

    @property
    def final(self) -> float:
        return self.accuracies[-1]

    @property
    def average(self) -> float:
        """Mean over tasks of the accuracy after each task."""
        return statistics.fmean(self.accuracies)


def run_continual(data: RealData, scenario: Scenario, builder: str | Builder, ipc: int,
                  train_spec: TrainSpec = TrainSpec(), seed: int = 0, model: str = "convnet", device: str = "auto",
                  progress: bool = False, memory_seed: int | None = None,
                  cache: DiskCache | None = None) -> ContinualResult:
    """GDumb-style class-incremental learning: after each task, add that task's memory and train a fresh ``model``
    (all ``data.num_classes`` outputs) from scratch on the whole memory; test it on the seen classes' test images.

    ``seed`` seeds the learner (initialisation and batches), ``memory_seed`` (default: ``seed``) the memories: class
    orders and learner seeds can then share one set of memories (a DM memory costs minutes, a learner seconds).
    ``cache``: the result is looked up there, else computed and stored, under its full config (data, tasks, builder
    and its settings, ipc, both seeds, model, training), so an interrupted benchmark continues where it stopped.
    """
    if scenario.num_classes != data.num_classes:
        raise ValueError(f"scenario has {scenario.num_classes} classes but {data.name!r} has {data.num_classes}")
    if model not in MODEL_NAMES:
        raise ValueError(f"unknown model {model!r}; known: {', '.join(MODEL_NAMES)}")
    builder = builder if isinstance(builder, Builder) else Builder(builder)
    memory_seed = seed if memory_seed is None else memory_seed
    config = {"method": "continual_run", "builder": builder.name,
              "settings": builder.settings(data.name, ipc, memory_seed), "dataset": data.name, "source": data.source,
              "n_train": len(data.x_train), "n_test": len(data.x_test), "ipc": ipc, "seed": seed,
              "memory_seed": memory_seed, "model": model,
              "train_spec": {k: v for k, v in canonical(train_spec).items() if k != "compile"},  # rounding only
              "tasks": canonical(scenario.tasks)}

    def compute() -> dict:
        dev = resolve_device(device)
        x_test, y_test = data.test_tensors(dev)
        memories, accuracies = [], []
        for t, task in enumerate(scenario.tasks):
            memories.append(build_memory(data, task, builder, ipc, memory_seed, progress))
            x, y = (v.to(dev) for v in memory_union(memories).decoded())
            net = get_model(model, data.channels, data.num_classes, data.image_size)
            net.reset_parameters(seeding.generator(seed, seeding.CONTINUAL, t, 0))
            net.to(dev)
            train_classifier(net, x, y, train_spec, seeding.generator(seed, seeding.CONTINUAL, t, 1),
                             progress=progress and f"task {t + 1}/{scenario.num_tasks}")
            mask = torch.isin(y_test, torch.tensor(scenario.seen(t), device=dev))
            accuracies.append(accuracy(net, x_test[mask], y_test[mask]))
        return {"accuracies": accuracies}

    value = cache.get_or_compute(config, compute) if cache is not None else compute()
    seen = tuple(tuple(scenario.seen(t)) for t in range(scenario.num_tasks))
    return ContinualResult(tuple(value["accuracies"]), seen, config)
