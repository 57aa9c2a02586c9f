"""Distillation by distribution matching: DM or IDM, with the CVPR 2024 constraints CC and CM as options.

Each iteration takes an embedding ConvNet (DM: a fresh random one; IDM: one drawn from a queue of nets trained on
real data, see :mod:`distill_lib.idm`), a real batch and one augmentation per class, embeds real and synthetic images
of *all* classes in one forward each (instance norm keeps samples independent), and takes one SGD step on the
synthetic pixels. With IDM's partitioning (``factor`` > 1) each stored image is decoded into factor^2 upsampled tiles
before it is matched. Every random draw is derived from (seed, purpose, iteration, class), so a run is
reproducible, can resume from any checkpoint to the same result, and is split across processes by class under
torchrun (each rank matches and updates only ``Distiller.classes``; see distill_lib.distributed).

This module is the maths of a run (:class:`DistillConfig`: what is computed; :class:`Distiller`: its state and
step); :mod:`distill_lib.runner` runs it (checkpoints, resume, interruption) and :mod:`distill_lib.options` says
where and how (device, compile).
"""
from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass

import torch

from . import augment, distributed, idm, losses, seeding
from .cache import canonical, check_finite_fields
from .data import DATASETS, RealData
from .featnet import RECIPES, FeatNetPool, FeatNetSpec, recipe
from .herding import embed_all, herding
from .models import MODEL_NAMES, NORMS, get_model
from .options import RunOptions
from .synthetic import SyntheticSet, check_factor, decode_partitions, encode_partitions
from .train import compiled, resolve_device, use_compile

# Starting images: random real ones (as published), noise, or a warm start: real images chosen per class by herding in
# a random ConvNet's embedding, so that their mean already matches the class mean there (DM's objective).
INITS = ("real", "noise", "herding")
METHODS = ("dm", "idm")
# The net DM's mean matching (and CM) embeds with: a fresh random ConvNet each iteration (DM as published), or the
# pretrained feature net that CC draws at that iteration: the control that tells CC's pull apart from a trained
# embedding (with match_net "featnet" and no CC, any gain over DM is the embedding's, not centralization's).
MATCH_NETS = ("random", "featnet")
# Settings whose default depends on the method: a field left at None takes its method's value. DM: as published,
# with the CVPR 2024 authors' lambda_CM and a lambda_CC chosen on CIFAR-10's validation split for the default
# 'convnet' feature nets (the authors' 0.05 was set for a 512-dimensional ResNet18 embedding; in the ConvNet's 2048
# dimensions it costs DM about 12 points: docs/featnets.md); IDM: the IDM authors' code (lr_img 0.2, 2x2 partitions)
# with the CVPR 2024 authors' IDM weights.
METHOD_DEFAULTS = {"dm": {"lr_img": 1.0, "factor": 1, "lambda_cc": 0.001, "lambda_cm": 0.01},
                   "idm": {"lr_img": 0.2, "factor": 2, "lambda_cc": 0.01, "lambda_cm": 0.03}}
# The queue's settings as they appear in identity() and on the command line: ``queue`` flattened, queue_<field>.
QUEUE_FIELDS = tuple(f"queue_{f.name}" for f in dataclasses.fields(idm.QueueSpec))
# Fields only IDM reads (its model queue and class-aware regulariser), as identity() names them.
IDM_FIELDS = (*QUEUE_FIELDS, "ce_weight")
# Fields added after cells were cached: identity() leaves each out at this default, so the cached cells keep their keys.
OMITTED_AT_DEFAULT = {"featnet_recipe": "default", "match_net": "random", "lr_half_life": 0}
# Settings a run reads only with CC (CC_FIELDS), only when it draws feature nets (FEATNET_FIELDS: CC or match_net
# "featnet") and only with CM (lambda_cm). identity() writes a run that does not read them with the values below (or
# the method's lambda_cm): the defaults every cell was keyed with before CC's default moved to the 'convnet' recipe,
# so neither that move nor a setting left over from another run splits a cached entry.
CC_FIELDS = ("lambda_cc", "cc_form", "cc_alpha", "cc_beta")
FEATNET_FIELDS = ("featnet_arch", "featnet_epochs", "featnet_per_class", "featnet_pool", "featnet_recipe")
UNREAD_AS = {"cc_form": "simplified", "cc_alpha": 1.0, "cc_beta": 1.0, "featnet_arch": "resnet18",
             "featnet_epochs": 2, "featnet_per_class": 0, "featnet_pool": 1, "featnet_recipe": "default"}
UNREAD_LAMBDA_CC = {"dm": 0.05, "idm": 0.01}
# Fields that may differ between a checkpoint and the run that resumes it without changing what is computed.
RESUMABLE_FIELDS = ("iterations",)
# "auto" compiles DM's net on CPU from this much work (iterations x classes x batch_real x pixels per image pushed
# through it, ~5 TFLOP for the ConvNet): enough to repay a cold compile with the faster forward (docs/speed.md).
COMPILE_MIN_WORK = 50_000_000


@dataclass(frozen=True)
class DistillConfig:
    """Everything that determines a distillation run (defaults: DM as published, CC/CM as the authors' code).

    ``method`` selects DM or IDM; everything else is shared. Fields left at None (``lr_img``, ``factor``,
    ``lambda_cc``, ``lambda_cm``) take the method's default from ``METHOD_DEFAULTS``; :meth:`resolved` fills them in.
    """

    dataset: str = "digits"
    method: str = "dm"
    ipc: int = 10  # stored images per class: the storage budget, whatever the factor
    iterations: int = 200
    lr_img: float | None = None
    # lr_img halves every lr_half_life iterations (0: constant, as published). A function of the iteration alone, not
    # of the run's length, so a shorter run is a prefix of a longer one (snapshots and resume stay exact).
    lr_half_life: int = 0
    momentum: float = 0.5
    batch_real: int = 256
    init: str = "real"
    dsa_strategy: str = augment.DEFAULT_STRATEGY
    model: str = "convnet"
    net_width: int = 128
    net_depth: int = 3
    net_norm: str = "instancenorm"
    net_act: str = "relu"
    net_pooling: str = "avgpool"
    seed: int = 0
    # IDM's partitioning: each stored image holds factor x factor tiles, each upsampled to full size when used.
    factor: int | None = None
    # IDM's model queue (see distill_lib.idm) and its class-aware regulariser: ce_weight * (the drawn net's running
    # training accuracy, a fraction) * sum over classes of the mean cross-entropy of that net on the synthetic images.
    # The authors' code multiplies an accuracy in percent by 0.5 (0.1 at IPC 50): the same as ce_weight 50 (10) here.
    queue: idm.QueueSpec = idm.QueueSpec()  # validated on its own, also for DM, so a typo never hides
    ce_weight: float = 50.0
    # Class centralization (inter-sample relation), on a pretrained feature net.
    cc: bool = False
    lambda_cc: float | None = None
    cc_form: str = "simplified"
    cc_alpha: float = 1.0
    cc_beta: float = 1.0
    featnet_arch: str = "resnet18"  # the "default" recipe's net
    featnet_epochs: int = 6
    featnet_per_class: int = 0  # the "default" recipe's training images per class (0: the whole training set)
    featnet_pool: int = 1
    # How the feature nets are trained (distill_lib.featnet.RECIPES). "convnet" (the DM ConvNet on the full training
    # set, 6 epochs: 75 % on CIFAR-10, the net with which CC gains there; docs/featnets.md) fixes its net and training
    # set; "default" (the original, weak and costly setting) takes featnet_arch and featnet_per_class. featnet_epochs
    # is the length of any recipe.
    featnet_recipe: str = "convnet"
    match_net: str = "random"  # MATCH_NETS; "featnet" is DM only (IDM matches in its queue's nets)
    # Covariance matching (inter-feature relation), on the embedding net's last feature map (DM: the random ConvNet;
    # IDM: the net drawn from the queue).
    cm: bool = False
    lambda_cm: float | None = None

    def __post_init__(self):
        check_finite_fields(self)
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; known: {', '.join(DATASETS)}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        for name in ("ipc", "iterations", "batch_real", "net_width", "net_depth", "featnet_epochs", "featnet_pool"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr_img", "lambda_cc", "lambda_cm", "cc_alpha"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive (or None: the method's default), got {getattr(self, name)}")
        if self.factor is not None:
            if not isinstance(self.factor, int) or self.factor < 1:
                raise ValueError(f"factor must be an integer >= 1 (or None: the method's default), got {self.factor!r}")
            check_factor(self.factor, DATASETS[self.dataset].image_size, f"images of {self.dataset!r}")
        if not isinstance(self.queue, idm.QueueSpec):
            raise ValueError(f"queue must be a distill_lib.idm.QueueSpec, got {self.queue!r}")
        for name in ("momentum", "featnet_per_class", "cc_beta", "ce_weight", "lr_half_life"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.model not in MODEL_NAMES:
            raise ValueError(f"unknown model {self.model!r}; known: {', '.join(MODEL_NAMES)}")
        if self.net_norm not in NORMS:
            raise ValueError(f"net_norm must be one of {NORMS}, got {self.net_norm!r}")
        if self.cc_form not in losses.CC_FORMS:
            raise ValueError(f"cc_form must be one of {losses.CC_FORMS}, got {self.cc_form!r}")
        if self.match_net not in MATCH_NETS:
            raise ValueError(f"match_net must be one of {MATCH_NETS}, got {self.match_net!r}")
        if self.match_net == "featnet" and self.method != "dm":
            raise ValueError("match_net 'featnet' is for DM; IDM matches in the nets of its model queue")
        augment.parse_strategy(self.dsa_strategy)
        self._check_featnet_recipe()

    def _check_featnet_recipe(self) -> None:
        if self.featnet_recipe not in RECIPES:
            raise ValueError(f"featnet_recipe must be one of {tuple(RECIPES)}, got {self.featnet_recipe!r}")
        if self.featnet_recipe != "default":
            changed = [name for name in ("featnet_arch", "featnet_per_class")
                       if getattr(self, name) != getattr(DistillConfig, name)]
            if changed:
                raise ValueError(f"the {self.featnet_recipe!r} feature-net recipe fixes its net and training set; "
                                 f"leave {' and '.join(changed)} at the default (or use featnet_recipe 'default')")

    @property
    def uses_featnets(self) -> bool:
        """Whether the run draws pretrained feature nets: for CC, or as DM's matching net (``match_net``)."""
        return self.cc or self.match_net == "featnet"

    def featnet_spec(self) -> FeatNetSpec:
        """The CC feature net's spec (a pool's first member): the recipe, at featnet_epochs and this run's seed."""
        if self.featnet_recipe == "default":
            return FeatNetSpec(arch=self.featnet_arch, epochs=self.featnet_epochs,
                               per_class=self.featnet_per_class or None, seed=self.seed)
        return recipe(self.featnet_recipe, epochs=self.featnet_epochs, seed=self.seed)

    def resolved(self) -> "DistillConfig":
        """This config with each None replaced by its method's default (``METHOD_DEFAULTS``): the values a run uses."""
        defaults = METHOD_DEFAULTS[self.method]
        return dataclasses.replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def identity(self) -> dict:
        """What determines the result, as a JSON-ready dict (cache keys, checkpoint checks): the resolved values.

        For DM it leaves out the IDM settings (``method``, the IDM-only fields, and ``factor`` when it is 1), so they
        never split a DM cache entry; likewise the fields of ``OMITTED_AT_DEFAULT`` at their defaults (settings added
        after cells were cached). Settings the run does not read (CC's without CC, the feature nets' without any,
        lambda_cm without CM) appear at fixed values (``UNREAD_AS``), whatever the config holds. The queue's settings
        appear flat (``queue_length``, ...: ``QUEUE_FIELDS``). All of it keeps the keys of cached runs and saved
        files valid (docs/cache.md).
        """
        values = canonical(self.resolved())
        if not self.cc:  # settings the run does not read, at the values cells were first keyed with (UNREAD_AS)
            values.update({name: UNREAD_AS[name] for name in CC_FIELDS[1:]}, lambda_cc=UNREAD_LAMBDA_CC[self.method])
        if not self.uses_featnets:
            values.update({name: UNREAD_AS[name] for name in FEATNET_FIELDS})
        if not self.cm:
            values["lambda_cm"] = METHOD_DEFAULTS[self.method]["lambda_cm"]
        for name, default in OMITTED_AT_DEFAULT.items():
            if values[name] == default:
                del values[name]
        values.update({f"queue_{name}": value for name, value in values.pop("queue").items()})
        if self.method == "dm":
            for name in ("method", *IDM_FIELDS, *(("factor",) if values["factor"] == 1 else ())):
                del values[name]
        return values

    def label(self) -> str:
        """'DM', 'IDM+CC+CM', 'DM(featnet)+CM', ...: how tables name the method."""
        return (self.method.upper() + ("(featnet)" if self.match_net == "featnet" else "") +
                ("+CC" if self.cc else "") + ("+CM" if self.cm else ""))

    def loss_weights(self) -> dict[str, float]:
        cfg = self.resolved()
        return {"dm": 1.0, "cc": cfg.lambda_cc, "cm": cfg.lambda_cm, "ce": cfg.ce_weight}


def config_from_dict(values: dict) -> DistillConfig:
    """Rebuild a config saved with a SyntheticSet or checkpoint (unknown keys are an error).

    Configs saved before the run options moved to :class:`RunOptions` carry them (device, compile, ...): they are
    dropped, as they never changed the result. Configs saved before ``queue`` was nested hold its settings flat
    (queue_length, ...): they are read into ``queue``.
    """
    run_options = {f.name for f in dataclasses.fields(RunOptions)}
    values = {k: v for k, v in values.items() if k not in run_options}
    flat_queue = {k[len("queue_"):]: values.pop(k) for k in QUEUE_FIELDS if k in values}
    if flat_queue or isinstance(values.get("queue"), dict):
        values["queue"] = idm.QueueSpec(**{**values.get("queue", {}), **flat_queue})
    unknown = set(values) - {f.name for f in dataclasses.fields(DistillConfig)}
    if unknown:
        raise ValueError(f"unknown DistillConfig fields {sorted(unknown)}")
    return DistillConfig(**values)


class NonFiniteStep(ArithmeticError):
    """A step whose loss or pixel gradient is NaN or infinite; raised before the update, the state unchanged."""


class Distiller:
    """The state of one run: synthetic pixels, their optimiser, the embedding net (DM's reusable random net, or IDM's
    model queue), the feature-net pool. ``options``: where and how it runs (device, compile, real_chunk)."""

    def __init__(self, config: DistillConfig, data: RealData, options: RunOptions = RunOptions(),
                 progress: bool = True):
        self.device = distributed.rank_device(resolve_device(options.device))
        distributed.setup(self.device)  # first: every process checks the same things from here on
        distributed.check_same({"config": canonical(config), "options": canonical(options),
                                "data": _fingerprint(data)})
        if data.name != config.dataset:
            raise ValueError(f"config is for dataset {config.dataset!r} but data is {data.name!r}")
        resolved = config.resolved()
        self.factor = resolved.factor
        check_factor(self.factor, data.image_size, f"images of {data.name!r}")
        # Real images drawn per class: ipc, or ipc * factor^2 to fill the tiles of the partitioned initialisation.
        smallest = min(data.class_count(c) for c in range(data.num_classes))
        needed = config.ipc * (self.factor ** 2 if config.init == "real" else 1)
        if needed > smallest:
            raise ValueError(f"ipc={config.ipc} (x factor^2 = {needed} real images to initialise from) is larger than "
                             f"the smallest class ({smallest} training images)")
        self.samples_per_class = config.ipc * self.factor ** 2  # what is matched and trained on: decoded tiles
        if self.samples_per_class == 1 and (config.cc or config.cm):
            warnings.warn("with ipc=1 and factor 1 (DM's default), CC and CM are constants with zero gradient (one"
                          " sample is its own mean: the simplified CC is exactly 0); use IDM, whose partitioning"
                          " (factor 2) gives several samples per stored image", stacklevel=3)
        self.config, self.options, self.data = config, options, data
        self.n_real = min(config.batch_real, smallest)
        if self.n_real < config.batch_real:
            warnings.warn(f"batch_real={config.batch_real} exceeds the smallest class; using {self.n_real}",
                          stacklevel=3)
        self.classes = distributed.shard_classes(data.num_classes)  # this process's classes (all of them alone)
        self.net = get_model(config.model, data.channels, data.num_classes, data.image_size,
                             **_net_kwargs(config)).to(self.device)
        self.net.requires_grad_(False)  # only the pixels learn; no weight gradients are computed
        self.net.to(memory_format=torch.channels_last)  # faster for these convs and norms on CPU (docs/speed.md)
        # Batch norm mixes the samples of a batch, so its classes must go through the net one at a time.
        self.per_class_forward = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in self.net.modules())
        # DM's one net, compiled once: its weights are graph inputs, redrawn in place every iteration. (IDM's queue
        # holds many nets and trains them: eager.)
        work = config.iterations * data.num_classes * config.batch_real * data.image_size[0] * data.image_size[1]
        self.compiled = config.method == "dm" and use_compile(options.compile, self.device, work >= COMPILE_MIN_WORK)
        self._net_features = compiled(self.net.features) if self.compiled else self.net.features
        # IDM: the queue's nets are copies of self.net, trained on real data of all classes (the same on every process).
        self.queue = None
        if config.method == "idm":
            idm.check_classifier(self.net, config.model)
            self.queue = idm.ModelQueue(self.net, data, config.queue, config.seed, self.device)
        self.featnets = self._featnet_pool(progress) if config.uses_featnets else None
        self.images = self._initial_images().to(self.device).requires_grad_(True)
        self.optimizer = torch.optim.SGD([self.images], lr=resolved.lr_img, momentum=config.momentum)
        self.iteration = 0
        self.history: list[dict] = []

    def _featnet_pool(self, progress: bool) -> FeatNetPool:
        """The pretrained feature nets (CC's, or DM's matching nets): pretrained (or read from the cache) by rank 0
        first, then exactly its weights on all."""
        cfg = self.config
        pool = distributed.main_first(lambda: FeatNetPool(self.data, cfg.featnet_spec(), cfg.featnet_pool,
                                                          self.device, progress and distributed.is_main()))
        for net in pool.nets:
            distributed.broadcast_module(net)
        return pool

    def _initial_images(self) -> torch.Tensor:
        cfg, data = self.config, self.data
        if cfg.init == "noise":
            return self._mine(torch.randn(data.num_classes * cfg.ipc, data.channels, *data.image_size,
                                          generator=seeding.generator(cfg.seed, seeding.SYN_INIT)))
        # With partitioning, each stored image starts as factor^2 real images of its class, downscaled into its tiles.
        n = cfg.ipc * self.factor ** 2
        if cfg.init == "herding":
            net = get_model(cfg.model, data.channels, data.num_classes, data.image_size, **_net_kwargs(cfg))
            net.reset_parameters(seeding.generator(cfg.seed, seeding.HERDING_INIT))
            return torch.cat([encode_partitions(self._herded(net, c, n), self.factor) for c in self.classes])
        return torch.cat([encode_partitions(data.sample_real(c, n, seeding.generator(cfg.seed, seeding.SYN_INIT, c)),
                                            self.factor) for c in self.classes])

    def _herded(self, net: torch.nn.Module, c: int, n: int) -> torch.Tensor:
        """``n`` real training images of class ``c`` chosen by herding in ``net``'s embedding."""
        x = self.data.normalize(self.data.x_train[self.data.class_indices(c)])
        return x[herding(embed_all(net, x), n)]

    def _mine(self, full: torch.Tensor) -> torch.Tensor:
        """This process's rows of a class-major tensor over all classes (e.g. from a checkpoint)."""
        per_class = len(full) // self.data.num_classes
        return torch.cat([full[c * per_class:(c + 1) * per_class] for c in self.classes])

    def _gathered(self, local: torch.Tensor) -> torch.Tensor:
        """The class-major tensor over all classes from every process's rows (``local`` itself for one process)."""
        return distributed.gather_classes(local, self.data.num_classes)

    def labels(self) -> torch.Tensor:
        return torch.arange(self.data.num_classes).repeat_interleave(self.config.ipc)

    def featnet(self, iteration: int) -> torch.nn.Module:
        """The pretrained feature net drawn at ``iteration`` (one draw serves CC and ``match_net`` "featnet")."""
        return self.featnets.sample(seeding.generator(self.config.seed, seeding.FEATNET_DRAW, iteration))

    def embedding_net(self, iteration: int) -> torch.nn.Module:
        """The net that embeds at ``iteration``: DM's fresh random net (or, with ``match_net`` "featnet", the drawn
        pretrained feature net), or the member IDM's queue draws."""
        if self.queue is not None:
            return self.queue.sample(iteration).net
        if self.config.match_net == "featnet":
            return self.featnet(iteration)
        self.net.reset_parameters(seeding.generator(self.config.seed, seeding.NET_INIT, iteration))
        return self.net

    def loss_terms(self, iteration: int) -> dict[str, torch.Tensor]:
        """The enabled loss terms (summed over classes) at ``iteration``, with the graph to the synthetic pixels.

        Its specification is :func:`distill_lib.reference.loss_terms`, the same step one class at a time; this is that
        loop batched (all classes in one forward, channels_last, compiled when enabled), and the tests check both agree.
        """
        cfg, seed, nc, n_syn = self.config, self.config.seed, len(self.classes), self.samples_per_class
        net = self.embedding_net(iteration)
        family = augment.choose_family(cfg.dsa_strategy, seeding.generator(seed, seeding.AUGMENT, iteration))
        real, draws_real, draws_syn = [], [], []
        for c in self.classes:
            real.append(self.data.sample_real(c, self.n_real, seeding.generator(seed, seeding.REAL_BATCH, iteration, c),
                                              self.device))
            # Siamese, as in DM's code: one parameter draw per class, shared by its real and synthetic images.
            draw = augment.sample_params(family, 1, self.data.image_size,
                                         seeding.generator(seed, seeding.AUGMENT, iteration, c))
            draws_real.append(draw.take(torch.zeros(self.n_real, dtype=torch.long)))
            draws_syn.append(draw.take(torch.zeros(n_syn, dtype=torch.long)))
        # Decoded tiles (the stored images themselves when factor is 1), class-major like the draws.
        syn = augment.apply(decode_partitions(self.images, self.factor), augment.AugDraw.cat(draws_syn))
        with torch.no_grad():
            real = augment.apply(torch.cat(real), augment.AugDraw.cat(draws_real))
            fmap_real = self._features(net, real, self.options.real_chunk).unflatten(0, (nc, self.n_real))
        fmap_syn = self._features(net, syn).unflatten(0, (nc, n_syn))
        embed_syn = net.head(fmap_syn.flatten(0, 1))  # the model's embedding of its last feature map (flatten)
        terms = {"dm": losses.batched_dm_loss(net.head(fmap_real.flatten(0, 1)).unflatten(0, (nc, self.n_real)),
                                              embed_syn.unflatten(0, (nc, n_syn)))}
        if cfg.cm:
            terms["cm"] = losses.batched_cm_loss(fmap_real, fmap_syn)
        if cfg.cc:
            terms["cc"] = losses.batched_cc_loss(self.featnet(iteration).embed(syn).unflatten(0, (nc, n_syn)),
                                                 cfg.cc_alpha, cfg.cc_beta, cfg.cc_form)
        if self.queue is not None and cfg.ce_weight > 0:  # IDM's class-aware regulariser, weighted by net accuracy
            logits = net.classifier(embed_syn).unflatten(0, (nc, n_syn))
            classes = torch.tensor(self.classes, device=logits.device)
            terms["ce"] = self.queue.sample(iteration).accuracy * losses.batched_ce_loss(logits, classes)
        return terms

    def _features(self, net: torch.nn.Module, x: torch.Tensor, chunk: int = 0) -> torch.Tensor:
        """Last feature maps of a class-major batch: in chunks of ``chunk`` images if > 0, per class for batch norm."""
        if self.per_class_forward:
            chunk = len(x) // len(self.classes)
        x = x.contiguous(memory_format=torch.channels_last)
        features = self._net_features if net is self.net else net.features
        if not chunk or chunk >= len(x):
            return features(x)
        return torch.cat([features(part) for part in x.split(chunk)])

    def step(self) -> dict:
        """One optimisation step on the synthetic pixels; returns and records its history entry.

        A loss term or pixel gradient that is NaN or infinite raises :class:`NonFiniteStep` *before* the update, with
        the run's state (pixels, momentum, IDM's queue) left as it was: the last finite state, ready to checkpoint.
        """
        start = time.perf_counter()
        queue_before = None
        if self.queue is not None:
            if self.iteration % self.queue.spec.push_interval == 0:
                queue_before = self.queue.state_dict()  # references, not copies: undoes the push if the step fails
            self.queue.start_iteration(self.iteration)  # IDM: push a new net when due
        terms = self.loss_terms(self.iteration)
        total = losses.combine(terms, self.config.loss_weights())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        # Each process holds a partial sum over its classes; the history keeps the sums over all classes. The last
        # value counts processes whose pixel gradient is not finite, so every process stops at the same step.
        values = distributed.all_reduce_sum([total.item()] + [value.item() for value in terms.values()]
                                            + [float(not bool(torch.isfinite(self.images.grad).all()))], self.device)
        record = {"iteration": self.iteration, "loss": values[0], **dict(zip(terms, values[1:-1]))}
        problem = next((f"loss term {k!r} is {record[k]}" for k in (*terms, "loss") if not math.isfinite(record[k])),
                       "the gradient of the synthetic pixels is not finite" if values[-1] else None)
        if problem:
            if queue_before is not None:
                self.queue.load_state_dict(queue_before)
            raise NonFiniteStep(f"iteration {self.iteration}: {problem}")
        self.optimizer.param_groups[0]["lr"] = lr = self.lr_at(self.iteration)
        self.optimizer.step()
        if self.config.lr_half_life:
            record["lr_img"] = lr
        if self.queue is not None:
            record["net_accuracy"] = self.queue.sample(self.iteration).accuracy  # the CE weight used
            self.queue.train(self.iteration)  # IDM: the chosen nets learn a few steps on real data
        record["seconds"] = time.perf_counter() - start
        self.history.append(record)
        self.iteration += 1
        return record

    def lr_at(self, iteration: int) -> float:
        """lr_img at ``iteration``: halved every ``lr_half_life`` iterations (constant when it is 0)."""
        lr, half_life = self.config.resolved().lr_img, self.config.lr_half_life
        return lr * 0.5 ** (iteration / half_life) if half_life else lr

    def result(self) -> SyntheticSet:
        """The whole synthetic set (gathered from every process; the same on all)."""
        return SyntheticSet(self._gathered(self.images.detach()), self.labels(), self.data.mean, self.data.std,
                            list(self.data.classes), canonical(self.config), list(self.history), self.factor)

    def state_dict(self) -> dict:
        """The whole run's state (images and momentum gathered over processes): resumable at any process count."""
        optimizer = self.optimizer.state_dict()
        optimizer["state"] = {index: {k: self._gathered(v).cpu() if _is_per_pixel(v, self.images) else v
                                      for k, v in state.items()}
                              for index, state in optimizer["state"].items()}  # copies: never touch the live state
        state = {"config": canonical(self.config), "iteration": self.iteration,
                 "images": self._gathered(self.images.detach()).cpu(), "optimizer": optimizer,
                 "history": canonical(self.history)}
        if self.queue is not None:
            state["queue"] = self.queue.state_dict()  # identical on every process
        return state

    def load_state_dict(self, state: dict) -> None:
        # Compared by identity (method defaults resolved), so a checkpoint of a DM config without IDM's fields resumes.
        saved = config_from_dict(state["config"]).identity()
        mine = self.config.identity()
        differing = [k for k in sorted(saved.keys() | mine.keys())
                     if k not in RESUMABLE_FIELDS and saved.get(k) != mine.get(k)]
        if differing:
            raise ValueError("checkpoint was written by a different config; differing fields: " +
                             ", ".join(f"{k} (checkpoint {saved.get(k)!r}, now {mine.get(k)!r})" for k in differing))
        with torch.no_grad():
            self.images.copy_(self._mine(state["images"]))
        optimizer = dict(state["optimizer"])
        optimizer["state"] = {index: {k: self._mine(v) if _is_per_pixel(v, state["images"]) else v
                                      for k, v in s.items()} for index, s in optimizer["state"].items()}
        self.optimizer.load_state_dict(optimizer)
        if self.queue is not None:
            self.queue.load_state_dict(state["queue"])
        self.iteration = int(state["iteration"])
        self.history = list(state["history"])


def _is_per_pixel(value, images: torch.Tensor) -> bool:
    """An optimiser state tensor shaped like the images (SGD's momentum): split and gathered with them."""
    return isinstance(value, torch.Tensor) and value.shape == images.shape


def _fingerprint(data: RealData) -> dict:
    """What must agree about the data across processes (cheap to compare)."""
    return {"name": data.name, "source": data.source, "train": len(data.x_train), "test": len(data.x_test),
            "classes": list(data.classes)}


def _net_kwargs(config: DistillConfig) -> dict:
    if not config.model.startswith("convnet"):
        return {}
    kwargs = dict(width=config.net_width, depth=config.net_depth, activation=config.net_act,
                  pooling=config.net_pooling)
    if config.model == "convnet":
        kwargs["norm"] = config.net_norm
    return kwargs

