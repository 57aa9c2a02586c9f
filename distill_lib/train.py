"""The one loop that trains a classifier on tensors.

Evaluation of synthetic sets, feature-net pretraining, IDM's model queue and the continual learner all train a
network on (images, labels) tensors with SGD, optional DSA and a step decay; they all come here.
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import augment


@dataclass(frozen=True)
class TrainSpec:
    """SGD with momentum and weight decay; lr x ``lr_decay`` after ``lr_decay_at`` of the epochs (DM's protocol)."""

    epochs: int = 300
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    lr_decay_at: float = 0.5
    lr_decay: float = 0.1
    dsa_strategy: str = augment.DEFAULT_STRATEGY
    compile: bool = False  # run forward/backward through torch.compile (same computation, fused kernels)

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        augment.parse_strategy(self.dsa_strategy)

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, batches, generator: torch.Generator,
                dsa_strategy: str = "none") -> tuple[float, float]:
    """One SGD step per (inputs, labels) batch, DSA on each; returns the mean loss and the training accuracy.

    The accuracy counts the logits of each step's forward pass (train mode, before that step's update), as a running
    training accuracy does. ``batches`` may be a generator: it is consumed lazily, between the steps.
    """
    model.train()
    total, correct, seen = 0.0, 0, 0
    for inputs, labels in batches:
        # contiguous: DSA families return different strides, each of which would be a new graph for torch.compile
        logits = model(augment.augment(inputs, dsa_strategy, generator).contiguous())
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(labels)
        correct += int((logits.detach().argmax(1) == labels).sum())
        seen += len(labels)
    if seen == 0:
        raise ValueError("train_steps got no batches")
    return total / seen, correct / seen


def run_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
              batch_size: int, generator: torch.Generator, dsa_strategy: str = "none",
              bar: tqdm | None = None) -> float:
    """One pass over (x, y) in a seeded random order, DSA on each batch; returns the mean training loss.

    ``bar``: a progress bar advanced by one after every batch.
    """
    order = torch.randperm(len(x), generator=generator).to(x.device)
    batches = ((x[idx], y[idx]) for idx in order.split(batch_size))
    return train_steps(model, optimizer, ticking(batches, bar), generator, dsa_strategy)[0]


def ticking(items, bar: tqdm | None):
    """``items`` unchanged, advancing ``bar`` by one as each is consumed (when the consumer asks for the next)."""
    for item in items:
        yield item
        if bar is not None:
            bar.update(1)


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: TrainSpec,
                     generator: torch.Generator, progress: bool | str = False) -> list[float]:
    """Train ``model`` in place on (x, y) (already on the model's device); returns the loss of every epoch.

    ``progress``: a bar (with that name when a string) counting batches, so that long epochs show an ETA at once.
    """
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need as many labels as images (and at least one), got {len(x)} and {len(y)}")
    optimizer = spec.optimizer(model)  # the compiled wrapper shares these parameters
    net = compiled(model) if spec.compile else model
    losses = []
    bar = progress_bar(spec, len(x), progress)
    try:
        for epoch in range(spec.epochs):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(spec, epoch)
            losses.append(run_epoch(net, optimizer, x, y, spec.batch_size, generator, spec.dsa_strategy, bar))
            bar.set_postfix(epoch=f"{epoch + 1}/{spec.epochs}", refresh=False)
    finally:
        bar.close()
    return losses


def learning_rate(spec: TrainSpec, epoch: int) -> float:
    """The lr of ``epoch``: ``spec.lr``, times ``spec.lr_decay`` from epoch ``int(epochs * lr_decay_at)`` on (a
    decay that would fall on epoch 0 is dropped)."""
    decay_epoch = int(spec.epochs * spec.lr_decay_at)
    return spec.lr * spec.lr_decay if 0 < decay_epoch <= epoch else spec.lr


def progress_bar(spec: TrainSpec, num_images: int, progress: bool | str) -> tqdm:
    """A bar counting SGD steps (batches) over all epochs, named ``progress`` when a string, hidden when falsy."""
    return tqdm(total=spec.epochs * math.ceil(num_images / spec.batch_size), unit="batch", leave=False,
                desc=progress if isinstance(progress, str) else "train", disable=not progress)


def resolve_device(device: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU; anything else must be a valid torch device string."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}: {err}") from None


def machine(device: torch.device) -> str:
    """Where work ran, in words, for the records that keep its seconds: the GPU's name, or the CPU's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} thread(s)"


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int | None = None, compile: bool = False) -> torch.Tensor:
    """Predicted labels in eval mode, in batches.

    On CPU the default is channels_last batches of 32 images, which keep activations in cache (docs/speed.md);
    elsewhere batches of 1000. ``compile``: through torch.compile, with
    the last batch zero-padded to full size so that one compiled graph serves every batch (in eval mode every model
    of the zoo treats samples independently, so padding cannot change the real samples' outputs).
    """
    model.eval()
    on_cpu = x.device.type == "cpu"
    batch_size = batch_size or (32 if on_cpu else 1000)
    memory_format = torch.channels_last if on_cpu and x.ndim == 4 else torch.contiguous_format
    net = compiled(model) if compile else model
    model.to(memory_format=memory_format)
    try:
        labels = []
        for part in x.split(batch_size):
            n = len(part)
            if compile and n < batch_size:
                part = torch.cat([part, part.new_zeros(batch_size - n, *part.shape[1:])])
            labels.append(net(part.contiguous(memory_format=memory_format))[:n].argmax(1))
        return torch.cat(labels)
    finally:
        model.to(memory_format=torch.contiguous_format)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None,
             compile: bool = False) -> float:
    """Fraction of (x, y) classified correctly."""
    return (predict(model, x, batch_size, compile) == y).float().mean().item()


COMPILE_MODES = ("auto", "on", "off")


def use_compile(mode: str, device: torch.device, worth_it: bool) -> bool:
    """The one rule for the ``compile`` settings of evaluation and distillation: "on"/"off" as said; "auto" compiles
    on CPU when ``worth_it`` (enough work to repay a cold compile, decided by the caller). On CUDA "auto" stays eager."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {COMPILE_MODES}, got {mode!r}")
    if mode != "auto":
        return mode == "on"
    return device.type == "cpu" and worth_it


def compiled(model):
    """``model`` (a module or a function) through torch.compile (static shapes), or ``model`` itself with a warning where compiling fails.

    Compiled graphs are shared by every model of the same architecture (parameters are graph inputs), so the cold
    compile (seconds per graph) is paid once per process and shape; inductor also caches on disk.
    """
    return torch.compile(model, dynamic=False) if compile_available() else model


@functools.cache
def compile_available() -> bool:
    """Whether torch.compile works here (it needs a C++ compiler on CPU); checked once per process."""
    try:
        torch.compile(lambda t: torch.relu(t) * 2, dynamic=False)(torch.ones(2))
        return True
    except Exception as err:  # a missing compiler surfaces as various backend errors
        warnings.warn(f"torch.compile is not available ({type(err).__name__}: {err}); running eagerly")
        return False
