"""One distillation step written for reading: the per-class loop in the paper's shape.

For each class c: a real batch, one Siamese DSA draw shared by its real and synthetic images, both embedded by the
iteration's net, and the enabled terms (DM, CM, CC, IDM's CE) of that class, summed over classes. It draws the same
random streams as the library (:mod:`distill_lib.seeding`), so it is the specification of the batched
:meth:`distill_lib.distill.Distiller.loss_terms`: the tests check that both give the same terms and pixel gradients.
It is also the plain per-class loop the speed benchmark times against the library.

Comparing gradients: the library batches all classes in channels_last (optionally compiled) kernels, this loop runs
one class at a time in NCHW, so their float32 sums round differently. The loss is continuous and agrees to rounding.
Its pixel gradient need not: ReLU's derivative jumps at 0, so a unit whose input lies within rounding of 0 can be on
in one computation and off in the other, and that unit's whole share of the gradient appears in one and not in the
other. No elementwise tolerance proportional to float32's eps can hold; :func:`gradient_error` is normwise, against
this loop in float64, and :data:`GRADIENT_TOLERANCE` says how much it may be.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import augment, losses, seeding
from .synthetic import decode_partitions

# ||g - g_ref|| / ||g_ref|| allowed between the library's float32 pixel gradient and this loop's float64 one. Rounding
# alone gives a few float32 eps (1.2e-7) times sqrt(reduction length) (a conv's 9 x width inputs, the real batch, the
# embedding's dimension: at most a few thousand), i.e. 1e-6 to 1e-5; a ReLU unit on the other side of 0 moves the
# gradient by its own share, a small fraction of it for nets of thousands of units; a formula error moves it by order
# 1 (a flipped sign: 2; a class left out: its share, about 1 / sqrt(classes)). 1e-2 lies between the two.
GRADIENT_TOLERANCE = 1e-2


def gradient_error(grad: torch.Tensor, grad_ref: torch.Tensor) -> float:
    """The normwise relative error ||grad - grad_ref|| / ||grad_ref||, computed in float64."""
    grad, grad_ref = grad.double(), grad_ref.double()
    return float((grad - grad_ref).norm() / grad_ref.norm())


def embedding_net(run, iteration: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A plain (NCHW, eager) copy of the net that embeds at ``iteration``: DM's random net drawn from
    ``NET_INIT(seed, iteration)`` (with ``match_net`` "featnet": the pretrained net drawn from ``FEATNET_DRAW(seed,
    iteration)``), or a copy of the member IDM's queue draws at ``iteration``."""
    if run.queue is not None:
        return copy.deepcopy(run.queue.sample(iteration).net).to(dtype)
    if run.config.match_net == "featnet":
        return copy.deepcopy(_drawn_featnet(run, iteration)).to(dtype)
    net = copy.deepcopy(run.net).to(memory_format=torch.contiguous_format)
    net.reset_parameters(seeding.generator(run.config.seed, seeding.NET_INIT, iteration))
    return net.to(dtype)  # drawn in float32 like the library's, then widened exactly


def _drawn_featnet(run, iteration: int) -> nn.Module:
    """The pool's member drawn at ``iteration``: one integer from ``FEATNET_DRAW(seed, iteration)``."""
    pool = run.featnets.nets
    return pool[int(torch.randint(len(pool), (1,), generator=seeding.generator(run.config.seed,
                                                                                 seeding.FEATNET_DRAW, iteration)))]


def loss_terms(run, iteration: int, images: torch.Tensor | None = None,
               dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The enabled loss terms of ``run`` (a :class:`~distill_lib.distill.Distiller`) at ``iteration``, summed over
    its classes, one class at a time. ``images``: the stored synthetic pixels (default ``run.images``), of ``dtype``;
    ``torch.float64`` computes the same formulas in double precision (a rounding-free yardstick)."""
    cfg, data, seed = run.config.resolved(), run.data, run.config.seed
    images = run.images if images is None else images
    net = embedding_net(run, iteration, dtype)
    family = augment.choose_family(cfg.dsa_strategy, seeding.generator(seed, seeding.AUGMENT, iteration))
    featnet = None
    if cfg.cc:  # one pretrained feature net per iteration, drawn from the pool
        featnet = copy.deepcopy(_drawn_featnet(run, iteration)).to(dtype)
    accuracy = run.queue.sample(iteration).accuracy if run.queue is not None else None  # IDM's CE weight
    terms: dict[str, torch.Tensor] = {}

    def add(name: str, value: torch.Tensor) -> None:
        terms[name] = terms[name] + value if name in terms else value

    for k, c in enumerate(run.classes):
        real = data.sample_real(c, run.n_real, seeding.generator(seed, seeding.REAL_BATCH, iteration, c)).to(dtype)
        syn = decode_partitions(images[k * cfg.ipc:(k + 1) * cfg.ipc], cfg.factor)  # factor^2 tiles per image
        # Siamese DSA: one parameter draw for the class, applied to all its real and synthetic images.
        draw = augment.sample_params(family, 1, data.image_size, seeding.generator(seed, seeding.AUGMENT, iteration, c))
        real = augment.apply(real, draw.take(torch.zeros(len(real), dtype=torch.long)))
        syn = augment.apply(syn, draw.take(torch.zeros(len(syn), dtype=torch.long)))
        with torch.no_grad():
            fmap_real = net.features(real)
        fmap_syn = net.features(syn)
        embed_syn = net.head(fmap_syn)
        add("dm", losses.dm_loss(net.head(fmap_real), embed_syn))
        if cfg.cm:
            add("cm", losses.cm_loss(fmap_real, fmap_syn))
        if cfg.cc:
            add("cc", losses.cc_loss(featnet.embed(syn), cfg.cc_alpha, cfg.cc_beta, cfg.cc_form))
        if accuracy is not None and cfg.ce_weight > 0:
            add("ce", accuracy * F.cross_entropy(net.classifier(embed_syn), torch.full((len(syn),), c)))
    return terms
