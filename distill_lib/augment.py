"""Differentiable Siamese Augmentation (DSA, Zhao & Bilen 2021).

A batched, generator-driven port of the ``DiffAugment`` used by Dataset
Condensation (DC/DSA) and Distribution Matching (DM). Augmentation is split
into three steps so that the same random parameters can be shared between the
real and the synthetic batch (the "Siamese" part):

1. :func:`choose_family` picks one augmentation family per call (DSA's
   single-mode: one family of the strategy, uniformly at random);
2. :func:`sample_params` draws per-sample parameters into an :class:`AugDraw`;
3. :func:`apply` applies a draw to a batch, differentiably w.r.t. the images.

DM's distillation draws one parameter set per class and applies it to all of
that class's real and synthetic images (``draw.take`` with a repeated index),
as the reference code's seeded batch mode does; training networks draws
per-sample parameters. All randomness comes from an explicit CPU
``torch.Generator``; the global RNG is never touched.

Continuous parameters are stored as the raw uniforms ``r ~ U[0, 1)`` and the
magnitudes of :class:`DSAParams` are applied in :func:`apply`; integer ones
(translations, cutout centres) are stored as int64. Pass the same
``DSAParams`` to :func:`sample_params` and :func:`apply`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
FAMILIES: tuple[str, ...] = ("color", "crop", "cutout", "flip", "scale", "rotate")


@dataclass(frozen=True)
class DSAParams:
    """Augmentation magnitudes; defaults are ``ParamDiffAug`` from the DC/DM code."""

    scale: float = 1.2  # scale factors in [1/scale, scale]
    rotate: float = 15.0  # angles in [-rotate, rotate] degrees
    crop: float = 0.125  # max translation, as a fraction of the side
    cutout: float = 0.5  # side of the zeroed square, as a fraction of the side
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    flip: float = 0.5  # probability of a horizontal flip


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """Split ``"color_crop_flip"`` into families; ``"none"``/``""`` give ``()``."""
    if strategy.lower() in ("", "none"):
        return ()
    families = tuple(strategy.split("_"))
    for family in families:
        if family not in FAMILIES:
            raise ValueError(
                f"unknown augmentation family {family!r} in strategy {strategy!r}; "
                f"valid families: {', '.join(FAMILIES)} (or 'none')"
            )
    return families


@dataclass(frozen=True)
class AugDraw:
    """Random parameters of one augmentation family for ``n`` samples.

    ``params`` maps names to CPU tensors whose leading dim is the sample index,
    so selecting or concatenating samples is generic. Family ``"none"`` holds an
    ``(n, 0)`` placeholder so that it still knows its length.
    """

    family: str
    params: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        if not self.params:
            raise ValueError("AugDraw needs at least one parameter tensor")
        sizes = {v.shape[0] for v in self.params.values()}
        if len(sizes) != 1:
            raise ValueError(f"parameter tensors disagree on the number of samples: {sizes}")

    def __len__(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def take(self, index: slice | torch.Tensor) -> AugDraw:
        """The draw restricted to the samples selected by ``index``."""
        return AugDraw(self.family, {k: v[index] for k, v in self.params.items()})

    @staticmethod
    def cat(draws: list[AugDraw]) -> AugDraw:
        """Concatenate draws of one family along the sample dimension."""
        if not draws:
            raise ValueError("AugDraw.cat needs at least one draw")
        families = {d.family for d in draws}
        if len(families) != 1:
            raise ValueError(f"cannot concatenate draws of different families: {sorted(families)}")
        keys = draws[0].params.keys()
        return AugDraw(draws[0].family, {k: torch.cat([d.params[k] for d in draws]) for k in keys})


def choose_family(strategy: str, generator: torch.Generator) -> str:
    """One family of ``strategy``, uniformly at random (``"none"`` if it is empty)."""
    families = parse_strategy(strategy)
    if not families:
        return "none"
    return families[int(torch.randint(len(families), (1,), generator=generator))]


def _cutout_size(image_size: tuple[int, int], params: DSAParams) -> tuple[int, int]:
    h, w = image_size
    return int(h * params.cutout + 0.5), int(w * params.cutout + 0.5)


def sample_params(
    family: str,
    n: int,
    image_size: tuple[int, int],
    generator: torch.Generator,
    params: DSAParams = DSAParams(),
) -> AugDraw:
    """Draw the random parameters of ``family`` for ``n`` images of ``image_size`` (H, W).

    The order of the draws follows the reference code (e.g. brightness, then
    saturation, then contrast), all on CPU from ``generator``.
    """
    h, w = image_size

    def rand() -> torch.Tensor:
        return torch.rand(n, generator=generator)

    def randint(low: int, high: int) -> torch.Tensor:
        return torch.randint(low, high, (n,), generator=generator)

    if family == "none":
        drawn = {"none": torch.zeros(n, 0)}
    elif family == "color":
        drawn = {"brightness": rand(), "saturation": rand(), "contrast": rand()}
    elif family == "flip":
        drawn = {"flip": rand()}
    elif family == "scale":
        drawn = {"scale_x": rand(), "scale_y": rand()}
    elif family == "rotate":
        drawn = {"rotate": rand()}
    elif family == "crop":
        shift_h, shift_w = int(h * params.crop + 0.5), int(w * params.crop + 0.5)
        drawn = {"shift_x": randint(-shift_h, shift_h + 1), "shift_y": randint(-shift_w, shift_w + 1)}
    elif family == "cutout":
        size_h, size_w = _cutout_size(image_size, params)
        drawn = {
            "offset_x": randint(0, h + (1 - size_h % 2)),
            "offset_y": randint(0, w + (1 - size_w % 2)),
        }
    else:
        raise ValueError(f"unknown augmentation family {family!r}; valid: {', '.join(FAMILIES)}, none")
    return AugDraw(family, drawn)


def _affine(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Resample ``x`` through per-sample maps theta = [[a, b, 0], [c, d, 0]] (bilinear, zero padding)."""
    zero = torch.zeros_like(a)
    theta = torch.stack([torch.stack([a, b, zero], 1), torch.stack([c, d, zero], 1)], 1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def _crop(x: torch.Tensor, shift_x: torch.Tensor, shift_y: torch.Tensor) -> torch.Tensor:
    """Translate by (shift_x, shift_y) pixels, filling with zeros (pad-and-gather as in DC)."""
    n, _, h, w = x.shape
    rows = (torch.arange(h, device=x.device) + shift_x[:, None] + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device) + shift_y[:, None] + 1).clamp(0, w + 1)
    batch = torch.arange(n, device=x.device)[:, None, None]
    padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)
    return padded[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, offset_x: torch.Tensor, offset_y: torch.Tensor, params: DSAParams) -> torch.Tensor:
    """Zero a square of clamped rows x clamped columns around each offset."""
    n, _, h, w = x.shape
    size_h, size_w = _cutout_size((h, w), params)
    rows = (offset_x[:, None] + torch.arange(size_h, device=x.device) - size_h // 2).clamp(0, h - 1)
    cols = (offset_y[:, None] + torch.arange(size_w, device=x.device) - size_w // 2).clamp(0, w - 1)
    in_rows = torch.zeros(n, h, dtype=torch.bool, device=x.device).scatter_(1, rows, True)
    in_cols = torch.zeros(n, w, dtype=torch.bool, device=x.device).scatter_(1, cols, True)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return x * keep[:, None].to(x.dtype)


def apply(x: torch.Tensor, draw: AugDraw, params: DSAParams = DSAParams()) -> torch.Tensor:
    """Apply ``draw`` to the batch ``x`` of shape (n, C, H, W); differentiable w.r.t. ``x``."""
    if len(draw) != x.shape[0]:
        raise ValueError(f"draw has {len(draw)} samples but the batch has {x.shape[0]}")
    if draw.family == "none":
        return x
    # Per-sample quantities are computed in at least float32 (exact flip decisions
    # and angles for half-precision x), then cast to x.dtype.
    p = {
        k: v.to(x.device, torch.promote_types(v.dtype, x.dtype) if v.is_floating_point() else v.dtype)
        for k, v in draw.params.items()
    }

    def per_sample(r: torch.Tensor) -> torch.Tensor:
        return r.to(x.dtype).view(-1, 1, 1, 1)

    if draw.family == "color":
        x = x + per_sample((p["brightness"] - 0.5) * params.brightness)
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * per_sample(p["saturation"] * params.saturation) + mean
        mean = x.mean(dim=[1, 2, 3], keepdim=True)
        return (x - mean) * per_sample(p["contrast"] + params.contrast) + mean
    if draw.family == "flip":
        return torch.where((p["flip"] < params.flip).view(-1, 1, 1, 1), x.flip(3), x)
    if draw.family == "scale":
        lo = 1.0 / params.scale
        sx, sy = (p[k] * (params.scale - lo) + lo for k in ("scale_x", "scale_y"))
        zero = torch.zeros_like(sx)
        return _affine(x, sx, zero, zero, sy)
    if draw.family == "rotate":
        # Same matrix as DC's rand_rotate: [[cos, -sin, 0], [sin, cos, 0]].
        angle = (p["rotate"] - 0.5) * 2 * params.rotate / 180 * math.pi
        cos, sin = angle.cos(), angle.sin()
        return _affine(x, cos, -sin, sin, cos)
    if draw.family == "crop":
        return _crop(x, p["shift_x"], p["shift_y"])
    if draw.family == "cutout":
        return _cutout(x, p["offset_x"], p["offset_y"], params)
    raise ValueError(f"unknown augmentation family {draw.family!r}")


def augment(
    x: torch.Tensor, strategy: str, generator: torch.Generator, params: DSAParams = DSAParams()
) -> torch.Tensor:
    """Choose a family, draw its parameters and apply them to ``x`` in one call."""
    family = choose_family(strategy, generator)
    draw = sample_params(family, len(x), tuple(x.shape[-2:]), generator, params)
    return apply(x, draw, params)
