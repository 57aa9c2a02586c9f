"""IDM's model queue (Zhao et al., CVPR 2023): embedding nets that learn on real data while the images are distilled.

DM embeds with a fresh random ConvNet every iteration. IDM keeps a queue of ConvNets instead: it starts with
``INITIAL_NETS`` random nets; at every iteration that is a multiple of ``push_interval`` a new random net is pushed
(the oldest one popped first when the queue is full); each iteration one net is drawn to embed real and synthetic
images, and after the image update ``train_nets`` distinct nets are each trained ``train_steps`` SGD steps on random
real batches of all classes, with the library's one training loop (:func:`distill_lib.train.train_steps`). A net's
accuracy on its most recent training batches weights IDM's class-aware regulariser (the cross-entropy of that net
on the synthetic images), so a net that still guesses contributes nothing.

Every draw comes from a stream of (the run's seed, purpose, net serial or iteration[, slot]): the queue depends only
on the seed and the real data of *all* classes, never on which classes a process distills, so every process of a
class-sharded run holds the same queue. :meth:`ModelQueue.state_dict` goes into the Distiller's checkpoint, so a
resumed run equals an uninterrupted one.

Departure from the authors' code, stated: their accuracy meters accumulate over all training batches since the last
evaluation (they reset every 100 iterations, and a net untrained since then weighs 0); here the weight is the
accuracy over the net's last training round (``train_steps`` batches), and 0 before its first one.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from . import seeding
from .cache import check_finite_fields
from .data import RealData
from .train import TrainSpec, train_steps

INITIAL_NETS = 3  # random nets in the queue before the first push (the authors' code)


@dataclass(frozen=True)
class QueueSpec:
    """The queue's schedule and the nets' SGD (momentum 0.9, weight decay 5e-4, no augmentation: the authors')."""

    length: int = 100        # most nets held; the oldest is popped when a push would exceed it
    push_interval: int = 30  # a new random net every this many iterations, from iteration 0
    train_nets: int = 2      # distinct nets trained after each image update
    train_steps: int = 10    # SGD steps per trained net per iteration
    batch: int = 256         # real images (all classes) per SGD step
    lr: float = 0.01

    def __post_init__(self):
        # Messages name the command line's flags (--queue-<name>), DistillConfig.queue's fields with that prefix.
        check_finite_fields(self)
        for name in ("length", "push_interval", "train_nets", "train_steps", "batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"queue_{name} must be an integer >= 1, got {value!r}")
        if self.train_nets > self.length:
            raise ValueError(f"queue_train_nets ({self.train_nets}) cannot exceed queue_length ({self.length})")
        if not self.lr > 0:
            raise ValueError(f"queue_lr must be positive, got {self.lr}")

    def cost(self) -> str:
        """What the queue adds to every iteration, said before a run starts (it is most of an IDM iteration)."""
        return (f"IDM: every iteration also trains {self.train_nets} queue nets {self.train_steps} SGD steps each on "
                f"{self.batch} real images ({self.train_nets * self.train_steps * self.batch} image passes forward "
                f"and backward); a new net joins every {self.push_interval} iterations (at most {self.length})")

    def train_spec(self) -> TrainSpec:
        return TrainSpec(epochs=1, lr=self.lr, momentum=0.9, weight_decay=5e-4, batch_size=self.batch,
                         dsa_strategy="none")


@dataclass(eq=False)
class Member:
    """One net of the queue with its own optimizer (momentum persists across its training rounds)."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    serial: int            # the n-th net ever pushed; its initialisation stream
    accuracy: float = 0.0  # training accuracy of its last round (0 before the first): the CE weight
    steps: int = 0         # SGD steps taken so far


def check_classifier(net: nn.Module, name: str = "") -> None:
    """IDM trains its embedding nets as classifiers: the net needs a trainable linear ``classifier`` head."""
    head = getattr(net, "classifier", None)
    if not isinstance(head, nn.Linear):
        raise ValueError(f"method 'idm' trains its embedding nets as classifiers on real data, but model "
                         f"{name or type(net).__name__!r} has no trainable classifier head (an nn.Linear "
                         f"'classifier'); use one of distill_lib.models.MODEL_NAMES")


class ModelQueue:
    """The nets, oldest first, with the push / sample / train schedule described in the module docstring."""

    def __init__(self, template: nn.Module, data: RealData, spec: QueueSpec, seed: int = 0, device="cpu"):
        check_classifier(template)
        self.template = copy.deepcopy(template).to(device=device, memory_format=torch.contiguous_format)
        self.template.requires_grad_(False)
        self.data, self.spec, self.seed, self.device = data, spec, seed, torch.device(device)
        self.members: list[Member] = []
        self.born = 0  # nets pushed so far, i.e. the serial of the next one
        self.on_step: Callable[[str], None] | None = None  # told "queue net k/n, step s/S" after each SGD step
        for _ in range(min(INITIAL_NETS, spec.length)):
            self.push()

    def __len__(self) -> int:
        return len(self.members)

    def push(self) -> Member:
        """Append a new random net (popping the oldest when full); its weights come from its serial's stream."""
        if len(self.members) == self.spec.length:
            self.members.pop(0)
        net = copy.deepcopy(self.template)
        net.reset_parameters(seeding.generator(self.seed, seeding.QUEUE_NET_INIT, self.born))
        member = Member(net, self.spec.train_spec().optimizer(net), self.born)
        self.members.append(member)
        self.born += 1
        return member

    def start_iteration(self, iteration: int) -> None:
        """The schedule's first step of an iteration: push a net when ``iteration`` is a multiple of the interval."""
        if iteration % self.spec.push_interval == 0:
            self.push()

    def sample(self, iteration: int) -> Member:
        """The member that embeds at ``iteration`` (eval mode); the same one every time it is asked."""
        g = seeding.generator(self.seed, seeding.QUEUE_SAMPLE, iteration)
        member = self.members[int(torch.randint(len(self.members), (1,), generator=g))]
        member.net.eval()
        return member

    def trained_at(self, iteration: int) -> list[int]:
        """Indices (into ``members``) of the distinct nets trained at ``iteration``, in training order."""
        g = seeding.generator(self.seed, seeding.QUEUE_TRAIN, iteration)
        return torch.randperm(len(self.members), generator=g)[:self.spec.train_nets].tolist()

    def real_batches(self, iteration: int, slot: int):
        """The ``train_steps`` real batches (normalised images, labels) for the ``slot``-th net trained at
        ``iteration``: each ``batch`` distinct training images of any class, drawn uniformly."""
        g = seeding.generator(self.seed, seeding.QUEUE_TRAIN, iteration, slot)
        n = len(self.data.x_train)
        for _ in range(self.spec.train_steps):
            idx = torch.randperm(n, generator=g)[:self.spec.batch]
            yield (self.data.normalize(self.data.x_train[idx].to(self.device)), self.data.y_train[idx].to(self.device))

    def train(self, iteration: int) -> None:
        """The schedule's last step of an iteration: train the chosen nets and record their accuracy."""
        for slot, index in enumerate(self.trained_at(iteration)):
            member = self.members[index]
            member.net.requires_grad_(True)
            try:
                _, member.accuracy = train_steps(member.net, member.optimizer, self._reported(iteration, slot),
                                                 seeding.generator(self.seed, seeding.QUEUE_TRAIN, iteration,
                                                                   slot, 1))
            finally:
                member.net.requires_grad_(False)  # only the synthetic pixels get gradients while matching
            member.steps += self.spec.train_steps

    def _reported(self, iteration: int, slot: int):
        """``real_batches``, telling ``on_step`` after each step: an IDM iteration can take minutes on a CPU."""
        for step, batch in enumerate(self.real_batches(iteration, slot), 1):
            yield batch
            if self.on_step is not None:
                self.on_step(f"queue net {slot + 1}/{self.spec.train_nets}, step {step}/{self.spec.train_steps}")

    def state_dict(self) -> dict:
        return {"born": self.born,
                "members": [{"serial": m.serial, "accuracy": m.accuracy, "steps": m.steps,
                             "net": m.net.state_dict(), "optimizer": m.optimizer.state_dict()}
                            for m in self.members]}

    def load_state_dict(self, state: dict) -> None:
        self.members = []
        for saved in state["members"]:
            net = copy.deepcopy(self.template)
            net.load_state_dict(saved["net"])
            member = Member(net, self.spec.train_spec().optimizer(net), int(saved["serial"]),
                            float(saved["accuracy"]), int(saved["steps"]))
            member.optimizer.load_state_dict(saved["optimizer"])
            self.members.append(member)
        self.born = int(state["born"])
