"""Evaluation of a synthetic set: train fresh networks on it, test them on the real test set.

The protocol travels with every number (``EvalResult.protocol``), so a table never loses how it was measured. The
random-real-subset baseline is a :class:`SyntheticSet` too (:func:`random_subset`) and goes through the same call.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field

import torch

from . import augment, distributed, seeding
from .cache import check_finite_fields
from .data import RealData
from .models import get_model
from .synthetic import SyntheticSet, nonfinite_problem
from .train import TrainSpec, accuracy, resolve_device, train_classifier, use_compile

COMPILE_MIN_WORK = 30_000  # image-passes; eager costs ~6 ms per image-pass on one core, so >= ~3 minutes of training


@dataclass(frozen=True)
class EvalProtocol:
    """How synthetic sets are judged: DM's protocol, with the epoch budget as the main knob."""

    model: str = "convnet"
    epochs: int = 300
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    dsa: bool = True
    dsa_strategy: str = augment.DEFAULT_STRATEGY
    num_models: int = 3
    seed: int = 0
    device: str = "auto"
    compile: str = "auto"  # torch.compile the training and test passes: "on", "off", or "auto" (see use_compile)

    def __post_init__(self):
        check_finite_fields(self)
        if self.num_models < 1:
            raise ValueError(f"num_models must be >= 1, got {self.num_models}")
        use_compile(self.compile, torch.device("cpu"), False)  # validates the mode
        self.train_spec()  # validates epochs, lr, batch size and the strategy
        augment.parse_strategy(self.dsa_strategy)  # also when dsa=False, so a typo never hides in the protocol
        resolve_device(self.device)

    def train_spec(self, compile: bool = False) -> TrainSpec:
        """lr x0.1 at half the epochs, as in DM's evaluation."""
        return TrainSpec(epochs=self.epochs, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                         batch_size=self.batch_size, dsa_strategy=self.dsa_strategy if self.dsa else "none",
                         compile=compile)

    def use_compile(self, device: torch.device, num_images: int) -> bool:
        """"auto": compile on CPU when the training work (epochs x images x models) is at least COMPILE_MIN_WORK.

        Compiled training steps are faster on a CPU but each graph costs a one-off cold compile, so tiny runs (tests,
        quick notebooks) stay eager (measurements: docs/speed.md). On CUDA "auto" stays eager.
        """
        return use_compile(self.compile, device, self.epochs * num_images * self.num_models >= COMPILE_MIN_WORK)

    def describe(self) -> str:
        return (f"{self.model}, {self.epochs} epochs, lr {self.lr} (x0.1 at half), momentum {self.momentum}, "
                f"wd {self.weight_decay}, batch {self.batch_size}, DSA {'on' if self.dsa else 'off'}, "
                f"{self.num_models} model{'s' if self.num_models > 1 else ''}, seed {self.seed}")


@dataclass(frozen=True)
class EvalResult:
    """Test accuracies (fractions) of the models trained under ``protocol``."""

    accuracies: tuple[float, ...]
    protocol: dict = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        return statistics.pstdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    def __str__(self) -> str:
        """'81.20 ± 0.35 %' over several networks; one network has no spread to show: '81.20 %'."""
        if len(self.accuracies) == 1:
            return f"{100 * self.mean:.2f} %"
        return f"{100 * self.mean:.2f} ± {100 * self.std:.2f} %"


def evaluate(syn: SyntheticSet, data: RealData, protocol: EvalProtocol = EvalProtocol(),
             progress: bool = False) -> EvalResult:
    """Train ``protocol.num_models`` fresh networks on ``syn`` (decoded view) and test each on ``data``'s test set.

    Under torchrun model k trains on rank k % world (each from its own seeded streams), and every rank returns all
    accuracies in model order: the numbers of one process.
    """
    if syn.num_classes != data.num_classes or syn.images.shape[1:] != data.x_train.shape[1:]:
        raise ValueError(f"synthetic set ({syn.num_classes} classes, images {tuple(syn.images.shape[1:])}) does not "
                         f"fit data set {data.name!r} ({data.num_classes} classes, {tuple(data.x_train.shape[1:])})")
    problem = nonfinite_problem(syn.images)
    if problem:
        raise ValueError(f"synthetic set {problem}; nothing to evaluate")
    device = distributed.rank_device(resolve_device(protocol.device))
    distributed.setup(device)
    x, y = (t.to(device) for t in syn.decoded())
    x_test, y_test = data.test_tensors(device)
    compile = protocol.use_compile(device, len(x))
    spec = protocol.train_spec(compile)
    progress = progress and distributed.is_main()  # asked here: inside spread() every rank is its own main

    def train_and_test(k: int) -> float:
        model = get_model(protocol.model, data.channels, data.num_classes, data.image_size)
        model.reset_parameters(seeding.generator(protocol.seed, seeding.EVAL_MODEL, k, 0))
        model.to(device)
        train_classifier(model, x, y, spec, seeding.generator(protocol.seed, seeding.EVAL_MODEL, k, 1),
                         progress=progress and f"eval model {k + 1}/{protocol.num_models}")
        return accuracy(model, x_test, y_test, compile=compile)

    return EvalResult(tuple(distributed.spread(protocol.num_models, train_and_test)), asdict(protocol))


def random_subset(data: RealData, ipc: int, seed: int = 0) -> SyntheticSet:
    """The baseline every table needs: ``ipc`` random real training images per class, as a SyntheticSet."""
    smallest = min(data.class_count(c) for c in range(data.num_classes))
    if not 0 < ipc <= smallest:
        raise ValueError(f"ipc must be in 1..{smallest} (the smallest class), got {ipc}")
    images = torch.cat([data.sample_real(c, ipc, seeding.generator(seed, seeding.RANDOM_SUBSET, c))
                        for c in range(data.num_classes)])
    labels = torch.arange(data.num_classes).repeat_interleave(ipc)
    return SyntheticSet(images, labels, data.mean, data.std, list(data.classes),
                        {"method": "random_subset", "dataset": data.name, "ipc": ipc, "seed": seed})
