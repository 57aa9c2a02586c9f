"""Tests for distill_lib.augment.

The core tests are differential: the batched ``apply`` is compared against
plain per-sample, per-pixel Python loops written from the DC/DM ``DiffAugment``
formulas (the affine families use a hand-written bilinear sampler, not
``grid_sample``).
"""

import math

import pytest
import torch

from distill_lib.augment import (
    DEFAULT_STRATEGY,
    FAMILIES,
    AugDraw,
    DSAParams,
    apply,
    augment,
    choose_family,
    parse_strategy,
    sample_params,
)

N, C, H, W = 8, 2, 6, 7  # small, non-square
STRONG = DSAParams(scale=1.6, rotate=90.0, crop=0.5, cutout=0.3, brightness=2.0, saturation=3.0, contrast=1.5)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(seed: int = 0, n: int = N, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, C, H, W, generator=gen(seed), dtype=dtype)


# ---------------------------------------------------------------- reference loops
# Each takes one image as nested lists img[c][i][j] and that sample's parameters
# as Python numbers, and returns nested lists.


def ref_color(img, rb, rs, rc, p):
    img = [[[v + (rb - 0.5) * p.brightness for v in row] for row in ch] for ch in img]
    out = [[[0.0] * W for _ in range(H)] for _ in range(C)]
    for i in range(H):
        for j in range(W):
            m = sum(img[c][i][j] for c in range(C)) / C
            for c in range(C):
                out[c][i][j] = (img[c][i][j] - m) * (rs * p.saturation) + m
    m = sum(v for ch in out for row in ch for v in row) / (C * H * W)
    return [[[(v - m) * (rc + p.contrast) + m for v in row] for row in ch] for ch in out]


def ref_flip(img, r, p):
    return [[row[::-1] if r < p.flip else row for row in ch] for ch in img]


def ref_affine(img, theta):
    """Bilinear sampling with align_corners=True and zeros outside the image."""
    (a, b, tx), (c_, d, ty) = theta
    out = [[[0.0] * W for _ in range(H)] for _ in range(C)]
    for i in range(H):
        for j in range(W):
            u, v = -1 + 2 * j / (W - 1), -1 + 2 * i / (H - 1)
            gx, gy = a * u + b * v + tx, c_ * u + d * v + ty
            px, py = (gx + 1) / 2 * (W - 1), (gy + 1) / 2 * (H - 1)
            x0, y0 = math.floor(px), math.floor(py)
            fx, fy = px - x0, py - y0
            corners = [
                (y0, x0, (1 - fy) * (1 - fx)),
                (y0, x0 + 1, (1 - fy) * fx),
                (y0 + 1, x0, fy * (1 - fx)),
                (y0 + 1, x0 + 1, fy * fx),
            ]
            for ch in range(C):
                out[ch][i][j] = sum(
                    wgt * img[ch][yy][xx] for yy, xx, wgt in corners if 0 <= yy < H and 0 <= xx < W
                )
    return out


def ref_scale(img, rx, ry, p):
    sx = rx * (p.scale - 1 / p.scale) + 1 / p.scale
    sy = ry * (p.scale - 1 / p.scale) + 1 / p.scale
    return ref_affine(img, [[sx, 0, 0], [0, sy, 0]])


def ref_rotate(img, r, p):
    t = (r - 0.5) * 2 * p.rotate / 180 * math.pi
    return ref_affine(img, [[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0]])  # as DC's rand_rotate


def ref_crop(img, tx, ty, p):
    out = [[[0.0] * W for _ in range(H)] for _ in range(C)]
    for c in range(C):
        for i in range(H):
            for j in range(W):
                if 0 <= i + tx < H and 0 <= j + ty < W:
                    out[c][i][j] = img[c][i + tx][j + ty]
    return out


def ref_cutout(img, ox, oy, p):
    sh, sw = int(H * p.cutout + 0.5), int(W * p.cutout + 0.5)
    rows = {min(max(ox + a - sh // 2, 0), H - 1) for a in range(sh)}
    cols = {min(max(oy + b - sw // 2, 0), W - 1) for b in range(sw)}
    return [[[0.0 if (i in rows and j in cols) else img[c][i][j] for j in range(W)] for i in range(H)] for c in range(C)]


REFERENCE = {
    "color": (ref_color, ("brightness", "saturation", "contrast")),
    "flip": (ref_flip, ("flip",)),
    "scale": (ref_scale, ("scale_x", "scale_y")),
    "rotate": (ref_rotate, ("rotate",)),
    "crop": (ref_crop, ("shift_x", "shift_y")),
    "cutout": (ref_cutout, ("offset_x", "offset_y")),
}


def reference_apply(x: torch.Tensor, draw: AugDraw, p: DSAParams) -> torch.Tensor:
    fn, keys = REFERENCE[draw.family]
    outs = []
    for k, img in enumerate(x.tolist()):
        outs.append(fn(img, *[draw.params[key][k].item() for key in keys], p))
    return torch.tensor(outs, dtype=x.dtype)


# ---------------------------------------------------------------- differential tests


@pytest.mark.parametrize("p", [DSAParams(), STRONG], ids=["default", "strong"])
@pytest.mark.parametrize("family", FAMILIES)
def test_apply_matches_reference_loop(family, p):
    x = images()
    draw = sample_params(family, N, (H, W), gen(1), p)
    torch.testing.assert_close(apply(x, draw, p), reference_apply(x, draw, p), atol=1e-6, rtol=0)


def test_reference_cases_are_exercised():
    """The seeds used above hit both flip outcomes, shifts past the border, and edge-clamped cutouts."""
    flip = sample_params("flip", N, (H, W), gen(1)).params["flip"]
    assert (flip < 0.5).any() and (flip >= 0.5).any()
    crop = sample_params("crop", N, (H, W), gen(1), STRONG).params
    assert crop["shift_x"].abs().max() >= 2 and (crop["shift_y"] != 0).any()
    cut = sample_params("cutout", N, (H, W), gen(1)).params
    assert (cut["offset_x"] <= 0).any() or (cut["offset_x"] >= H - 1).any() or (cut["offset_y"] >= W - 2).any()


def test_sample_params_draw_order_dtypes_and_ranges():
    n, p = 4000, DSAParams()
    for family in ("color", "flip", "scale", "rotate"):  # one fresh uniform per key, in the reference order
        g, keys = gen(3), REFERENCE[family][1]
        drawn = sample_params(family, n, (H, W), gen(3)).params
        assert list(drawn) == list(keys)
        for key in keys:
            assert drawn[key].dtype == torch.float32 and torch.equal(drawn[key], torch.rand(n, generator=g))

    crop = sample_params("crop", n, (H, W), gen(4), p).params  # shift = int(6*.125+.5)=1, int(7*.125+.5)=1
    cut = sample_params("cutout", n, (H, W), gen(5), p).params  # sizes 3 (odd), 4 (even)
    for v in (*crop.values(), *cut.values()):
        assert v.dtype == torch.int64 and v.shape == (n,)
    assert set(crop["shift_x"].tolist()) == {-1, 0, 1} == set(crop["shift_y"].tolist())
    assert set(cut["offset_x"].tolist()) == set(range(H))  # randint(0, H + 0)
    assert set(cut["offset_y"].tolist()) == set(range(W + 1))  # randint(0, W + 1)


def test_neutral_magnitudes_are_identity():
    x = images()
    neutral = DSAParams(scale=1.0, rotate=0.0, crop=0.0, cutout=0.0, flip=0.0)
    for family in ("scale", "rotate", "crop", "cutout", "flip"):
        draw = sample_params(family, N, (H, W), gen(2), neutral)
        torch.testing.assert_close(apply(x, draw, neutral), x, atol=1e-12, rtol=0)


# ---------------------------------------------------------------- randomness


def test_determinism_and_seed_dependence():
    x = images()
    for strategy in (DEFAULT_STRATEGY, "color", "crop_cutout"):
        assert torch.equal(augment(x, strategy, gen(7)), augment(x, strategy, gen(7)))
        assert not torch.equal(augment(x, strategy, gen(7)), augment(x, strategy, gen(8)))


def test_global_rng_untouched():
    x = images()
    state = torch.random.get_rng_state()
    for family in FAMILIES:
        apply(x, sample_params(family, N, (H, W), gen(0)))
    for seed in range(10):
        augment(x, DEFAULT_STRATEGY, gen(seed))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_choose_family_uses_generator_uniformly():
    fams = parse_strategy(DEFAULT_STRATEGY)
    g, g_ref = gen(9), gen(9)
    chosen = [choose_family(DEFAULT_STRATEGY, g) for _ in range(300)]
    assert chosen == [fams[torch.randint(len(fams), (1,), generator=g_ref).item()] for _ in range(300)]
    assert set(chosen) == set(FAMILIES)
    assert choose_family("flip", gen(0)) == "flip"
    assert choose_family("none", gen(0)) == "none"


# ---------------------------------------------------------------- Siamese use and AugDraw


@pytest.mark.parametrize("family", FAMILIES + ("none",))
def test_siamese_prefix(family):
    real, k = images(), 3
    draw = sample_params(family, N, (H, W), gen(11))
    assert torch.equal(apply(real, draw)[:k], apply(real[:k], draw.take(slice(0, k))))


def test_augdraw_take_and_cat():
    draw = sample_params("crop", 5, (H, W), gen(0))
    assert len(draw) == 5
    idx = torch.tensor([4, 0, 2])
    taken = draw.take(idx)
    assert taken.family == "crop" and len(taken) == 3
    for key, v in draw.params.items():
        assert torch.equal(taken.params[key], v[idx])
    joined = AugDraw.cat([draw.take(slice(0, 2)), draw.take(slice(2, 5))])
    assert joined.family == "crop" and all(torch.equal(joined.params[k], v) for k, v in draw.params.items())
    none = AugDraw.cat([sample_params("none", 2, (H, W), gen(0)), sample_params("none", 3, (H, W), gen(0))])
    assert len(none) == 5 and len(none.take(slice(1, 3))) == 2
    with pytest.raises(ValueError, match="different families"):
        AugDraw.cat([draw, sample_params("flip", 5, (H, W), gen(0))])
    with pytest.raises(ValueError):
        AugDraw.cat([])
    with pytest.raises(ValueError, match="disagree"):
        AugDraw("scale", {"scale_x": torch.rand(3), "scale_y": torch.rand(4)})


# ---------------------------------------------------------------- gradients and API edges


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_flow(family):
    x = images(n=2)[:, :, :4, :5].clone().requires_grad_(True)
    draw = sample_params(family, 2, (4, 5), gen(12), STRONG)
    assert torch.autograd.gradcheck(lambda t: apply(t, draw, STRONG), (x,))
    (apply(x, draw, STRONG) * torch.randn(2, C, 4, 5, generator=gen(13), dtype=x.dtype)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_parse_strategy():
    assert parse_strategy("color_crop_flip") == ("color", "crop", "flip")
    assert parse_strategy(DEFAULT_STRATEGY) == FAMILIES
    assert parse_strategy("none") == parse_strategy("None") == parse_strategy("") == ()
    with pytest.raises(ValueError, match=r"'colour'.*color, crop, cutout, flip, scale, rotate"):
        parse_strategy("colour_crop")
    with pytest.raises(ValueError, match="unknown augmentation family"):
        sample_params("blur", 2, (H, W), gen(0))


def test_none_strategy_is_identity():
    x = images()
    assert torch.equal(augment(x, "none", gen(0)), x)
    assert torch.equal(augment(x, "", gen(0)), x)


def test_length_mismatch_raises():
    draw = sample_params("color", N - 1, (H, W), gen(0))
    with pytest.raises(ValueError, match="samples"):
        apply(images(), draw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtype_preserved(dtype):
    x = images(dtype=dtype)
    for family in FAMILIES:
        assert apply(x, sample_params(family, N, (H, W), gen(0))).dtype == dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = images()
    for family in FAMILIES:
        draw = sample_params(family, N, (H, W), gen(14))
        torch.testing.assert_close(apply(x.cuda(), draw).cpu(), apply(x, draw), atol=1e-6, rtol=0)
