"""Tests for distill_lib.losses.

Differential: every loss is compared with a plain-Python loop written from the formula in docs/method.md (float64 numbers,
tolerance 1e-6). Then the gradient through the class mean, the overflow continuation of the paper's exp hinge, the
batched variants, ``combine`` and the IPC-1 facts.
"""
import math
import warnings

import pytest
import torch

from distill_lib import losses
from distill_lib.losses import (
    EXP_CLAMP,
    batched_cc_loss,
    batched_cm_loss,
    batched_dm_loss,
    batched_local_covariance,
    cc_loss,
    cm_loss,
    combine,
    dm_loss,
    local_covariance,
    safe_exp,
)

TOL = dict(rtol=1e-6, atol=1e-6)


def randn(*shape, seed=0, dtype=torch.float64, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * scale


def close(a, b, rtol=1e-6, atol=1e-6):
    a, b = (float(v.detach()) if torch.is_tensor(v) else float(v) for v in (a, b))
    return abs(a - b) <= atol + rtol * abs(b)


# ---------------------------------------------------------------- reference loops (plain Python floats)

def ref_dm(real, syn):
    """|| mean_i real_i - mean_j syn_j ||^2, one dimension at a time."""
    real, syn = real.tolist(), syn.tolist()
    total = 0.0
    for k in range(len(real[0])):
        mr = sum(row[k] for row in real) / len(real)
        ms = sum(row[k] for row in syn) / len(syn)
        total += (mr - ms) ** 2
    return total


def ref_cov(fmap):
    """(1/N) sum_i (X_i - Xbar)(X_i - Xbar)^T with X_i = fmap_i as (d, hw); triple loop over a, b, k."""
    n, d = fmap.shape[:2]
    x = fmap.reshape(n, d, -1).tolist()
    hw = len(x[0][0])
    xbar = [[sum(x[i][a][k] for i in range(n)) / n for k in range(hw)] for a in range(d)]
    cov = [[0.0] * d for _ in range(d)]
    for a in range(d):
        for b in range(d):
            s = 0.0
            for i in range(n):
                for k in range(hw):
                    s += (x[i][a][k] - xbar[a][k]) * (x[i][b][k] - xbar[b][k])
            cov[a][b] = s / n
    return cov


def ref_cm(fmap_real, fmap_syn):
    cr, cs = ref_cov(fmap_real), ref_cov(fmap_syn)
    return sum((cr[a][b] - cs[a][b]) ** 2 for a in range(len(cr)) for b in range(len(cr)))


def ref_sq_dists(feat):
    f = feat.tolist()
    k, d = len(f), len(f[0])
    fbar = [sum(f[j][t] for j in range(k)) / k for t in range(d)]
    return [sum((f[j][t] - fbar[t]) ** 2 for t in range(d)) for j in range(k)], fbar


def ref_cc(feat, alpha, beta, form):
    dists, _ = ref_sq_dists(feat)
    if form == "simplified":
        return sum(dists)
    return sum(max(0.0, math.exp(alpha * s) - beta) for s in dists)


# ---------------------------------------------------------------- per-class formulas

@pytest.mark.parametrize("nr, ns, d", [(7, 3, 5), (1, 1, 4), (12, 1, 9), (4, 10, 1)])
def test_dm_loss_matches_loop(nr, ns, d):
    real, syn = randn(nr, d, seed=nr), randn(ns, d, seed=100 + ns, scale=2.0) + 0.5
    assert close(dm_loss(real, syn), ref_dm(real, syn))


def test_dm_loss_is_zero_for_equal_means_and_is_symmetric():
    real = randn(6, 4, seed=1)
    syn = real[[2, 0, 5, 1, 4, 3]]  # same samples, other order: same mean
    assert float(dm_loss(real, syn)) == pytest.approx(0.0, abs=1e-12)
    other = randn(3, 4, seed=2)
    assert close(dm_loss(real, other), dm_loss(other, real))


@pytest.mark.parametrize("n, d, h, w", [(5, 3, 2, 2), (1, 4, 3, 1), (6, 2, 1, 1), (3, 4, 2, 3)])
def test_local_covariance_matches_loop(n, d, h, w):
    fmap = randn(n, d, h, w, seed=n * d)
    got = local_covariance(fmap)
    want = torch.tensor(ref_cov(fmap), dtype=torch.float64)
    assert got.shape == (d, d)
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(got, got.T, **TOL)  # symmetric
    assert torch.linalg.eigvalsh(got).min() > -1e-9  # positive semi-definite


def test_local_covariance_uses_spatial_positions_as_samples():
    """A single sample whose positions differ still has zero covariance: X_bar is the mean over samples, not hw."""
    fmap = randn(1, 3, 4, 4, seed=3)
    assert torch.equal(local_covariance(fmap), torch.zeros(3, 3, dtype=torch.float64))
    # Two samples: Sigma = (1/2) sum_i (X_i - Xbar)(X_i - Xbar)^T = (1/4) (X_0 - X_1)(X_0 - X_1)^T
    fmap = randn(2, 3, 2, 2, seed=4)
    diff = (fmap[0] - fmap[1]).reshape(3, -1)
    torch.testing.assert_close(local_covariance(fmap), diff @ diff.T / 4, **TOL)


@pytest.mark.parametrize("nr, ns", [(6, 3), (4, 1), (2, 5)])
def test_cm_loss_matches_loop(nr, ns):
    fr, fs = randn(nr, 3, 2, 2, seed=nr), randn(ns, 3, 2, 2, seed=50 + ns, scale=1.5)
    assert close(cm_loss(fr, fs), ref_cm(fr, fs))


@pytest.mark.parametrize("form", losses.CC_FORMS)
@pytest.mark.parametrize("alpha, beta", [(1.0, 1.0), (0.3, 2.5), (0.05, 0.0), (2.0, 40.0)])
@pytest.mark.parametrize("k, d", [(5, 3), (2, 6), (8, 1)])
def test_cc_loss_matches_loop(form, alpha, beta, k, d):
    feat = randn(k, d, seed=k + d, scale=0.8)
    assert close(cc_loss(feat, alpha, beta, form), ref_cc(feat, alpha, beta, form))


def test_cc_paper_hinge_cuts_off_below_beta():
    """Samples with exp(alpha d_j) <= beta contribute nothing; with a huge beta the loss is exactly 0."""
    feat = randn(6, 3, seed=9)
    assert float(cc_loss(feat, 1.0, 1e6, "paper")) == 0.0
    dists, _ = ref_sq_dists(feat)
    beta = math.exp(sorted(dists)[3])  # between the 4th and 5th sample: only the two farthest count
    want = sum(math.exp(s) - beta for s in dists if math.exp(s) > beta)
    assert close(cc_loss(feat, 1.0, beta, "paper"), want)


def test_cc_loss_rejects_unknown_form():
    with pytest.raises(ValueError, match="CC form"):
        cc_loss(randn(3, 2), form="exp")
    with pytest.raises(ValueError, match="CC form"):
        batched_cc_loss(randn(2, 3, 2), form="nope")


# ---------------------------------------------------------------- batched variants and combine

def test_batched_dm_equals_loop_over_classes():
    real, syn = randn(4, 7, 5, seed=1), randn(4, 3, 5, seed=2)
    want = sum(ref_dm(real[c], syn[c]) for c in range(4))
    assert close(batched_dm_loss(real, syn), want)
    assert close(batched_dm_loss(real, syn), sum(dm_loss(real[c], syn[c]) for c in range(4)))


def test_batched_local_covariance_and_cm_equal_loop_over_classes():
    fr, fs = randn(3, 5, 4, 2, 3, seed=3), randn(3, 2, 4, 2, 3, seed=4)
    cov = batched_local_covariance(fr)
    assert cov.shape == (3, 4, 4)
    for c in range(3):
        torch.testing.assert_close(cov[c], local_covariance(fr[c]), **TOL)
        torch.testing.assert_close(cov[c], torch.tensor(ref_cov(fr[c]), dtype=torch.float64), **TOL)
    want = sum(ref_cm(fr[c], fs[c]) for c in range(3))
    assert close(batched_cm_loss(fr, fs), want)


@pytest.mark.parametrize("form", losses.CC_FORMS)
def test_batched_cc_equals_loop_over_classes(form):
    feat = randn(4, 5, 3, seed=5, scale=0.7)
    want = sum(ref_cc(feat[c], 0.5, 1.2, form) for c in range(4))
    assert close(batched_cc_loss(feat, 0.5, 1.2, form), want)
    assert close(batched_cc_loss(feat, 0.5, 1.2, form), sum(cc_loss(feat[c], 0.5, 1.2, form) for c in range(4)))


def test_batched_gradients_equal_loop_gradients():
    def grads(fn):
        fs = randn(3, 4, 2, 2, 2, seed=6).requires_grad_(True)
        fn(fs).backward()
        return fs.grad

    fr = randn(3, 6, 2, 2, 2, seed=7)
    torch.testing.assert_close(grads(lambda fs: batched_cm_loss(fr, fs)),
                               grads(lambda fs: sum(cm_loss(fr[c], fs[c]) for c in range(3))), **TOL)
    torch.testing.assert_close(grads(lambda fs: batched_dm_loss(fr.flatten(2), fs.flatten(2))),
                               grads(lambda fs: sum(dm_loss(fr[c].flatten(1), fs[c].flatten(1)) for c in range(3))),
                               **TOL)
    torch.testing.assert_close(grads(lambda fs: batched_cc_loss(fs.flatten(2), 0.2, 1.0, "paper")),
                               grads(lambda fs: sum(cc_loss(fs[c].flatten(1), 0.2, 1.0, "paper") for c in range(3))),
                               **TOL)


def test_combine_weights_and_sums():
    terms = {"dm": torch.tensor(2.0, dtype=torch.float64), "cm": torch.tensor(3.0, dtype=torch.float64),
             "cc": torch.tensor(5.0, dtype=torch.float64)}
    got = combine(terms, {"dm": 1.0, "cm": 0.01, "cc": 0.05})
    assert close(got, 2.0 + 0.03 + 0.25)
    assert close(combine({"dm": terms["dm"]}, {"dm": 1.0, "cm": 100.0}), 2.0)  # weights of absent terms unused
    assert close(combine({"cm": terms["cm"]}, {}), 3.0)  # missing weight: 1
    x = torch.tensor(1.5, requires_grad=True)
    combine({"a": x * x, "b": x}, {"a": 2.0, "b": -3.0}).backward()
    assert float(x.grad) == pytest.approx(2.0 * 2 * 1.5 - 3.0)


def test_combine_raises_without_terms():
    with pytest.raises(ValueError, match="no loss term"):
        combine({}, {"dm": 1.0})


# ---------------------------------------------------------------- gradient through the class mean

def ref_cc_grad_paper(feat, alpha, beta):
    """Hand-derived: with w_i = alpha exp(alpha d_i) [exp(alpha d_i) > beta], d_i = ||f_i - fbar||^2,
    dL/df_j = 2 w_j (f_j - fbar) - (2/K) sum_i w_i (f_i - fbar)   (the second term is the path through fbar)."""
    dists, fbar = ref_sq_dists(feat)
    f = feat.tolist()
    k, d = len(f), len(f[0])
    w = [alpha * math.exp(alpha * s) if math.exp(alpha * s) > beta else 0.0 for s in dists]
    through_mean = [sum(w[i] * (f[i][t] - fbar[t]) for i in range(k)) * 2 / k for t in range(d)]
    grad = [[2 * w[j] * (f[j][t] - fbar[t]) - through_mean[t] for t in range(d)] for j in range(k)]
    return torch.tensor(grad, dtype=torch.float64)


def cc_grad(feat, alpha, beta, form, detach_mean=False):
    feat = feat.clone().requires_grad_(True)
    mean = feat.mean(0, keepdim=True)
    if detach_mean:
        sq = ((feat - mean.detach()) ** 2).sum(-1)
        loss = losses._cc_from_sq_dist(sq, alpha, beta, form)
    else:
        loss = cc_loss(feat, alpha, beta, form)
    loss.backward()
    return feat.grad


@pytest.mark.parametrize("alpha, beta", [(0.5, 1.0), (0.7, 1.6)])
def test_cc_paper_gradient_flows_through_mean(alpha, beta):
    feat = randn(5, 3, seed=11, scale=0.6)
    dists, _ = ref_sq_dists(feat)
    assert all(abs(math.exp(alpha * s) - beta) > 1e-3 for s in dists)  # away from the hinge's kink
    assert torch.autograd.gradcheck(lambda f: cc_loss(f, alpha, beta, "paper"), (feat.clone().requires_grad_(True),))
    got = cc_grad(feat, alpha, beta, "paper")
    torch.testing.assert_close(got, ref_cc_grad_paper(feat, alpha, beta), **TOL)
    detached = cc_grad(feat, alpha, beta, "paper", detach_mean=True)
    assert (got - detached).abs().max() > 1e-3  # the mean's gradient path is not cut


def test_cc_simplified_gradient():
    """sum_j ||f_j - fbar||^2: the path through fbar contributes -(2/K) sum_i (f_i - fbar) = 0, so the gradient is
    2 (f_j - fbar) whether or not fbar is detached."""
    feat = randn(6, 4, seed=12)
    assert torch.autograd.gradcheck(lambda f: cc_loss(f, form="simplified"), (feat.clone().requires_grad_(True),))
    got = cc_grad(feat, 1.0, 1.0, "simplified")
    torch.testing.assert_close(got, 2 * (feat - feat.mean(0, keepdim=True)), **TOL)
    torch.testing.assert_close(got, cc_grad(feat, 1.0, 1.0, "simplified", detach_mean=True), **TOL)


def test_batched_cc_gradcheck():
    feat = randn(2, 4, 3, seed=13, scale=0.5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: batched_cc_loss(f, 0.5, 1.0, "paper"), (feat,))


# ---------------------------------------------------------------- exp overflow

def test_safe_exp_is_exact_below_the_clamp():
    a = torch.linspace(-20, EXP_CLAMP, 57, dtype=torch.float64)
    for x, y in zip(a.tolist(), safe_exp(a).tolist()):
        assert y == pytest.approx(math.exp(x), rel=1e-12)


def test_safe_exp_continues_by_the_tangent_line():
    a = torch.tensor([EXP_CLAMP + 1e-3, EXP_CLAMP + 1, 100.0, 1e4, 1e8, 1e12], dtype=torch.float64,
                     requires_grad=True)
    y = safe_exp(a)
    ec = math.exp(EXP_CLAMP)
    for x, v in zip(a.tolist(), y.tolist()):
        assert v == pytest.approx(ec * (1 + x - EXP_CLAMP), rel=1e-12)
    y.sum().backward()
    torch.testing.assert_close(a.grad, torch.full_like(a, ec), rtol=1e-12, atol=0)  # the slope stays exp(c)
    # C^1 at the clamp: value and slope meet from both sides
    eps = 1e-6
    c = torch.tensor([EXP_CLAMP - eps, EXP_CLAMP, EXP_CLAMP + eps], dtype=torch.float64, requires_grad=True)
    v = safe_exp(c)
    v.sum().backward()
    assert v[0].item() == pytest.approx(ec, rel=1e-5) and v[2].item() == pytest.approx(ec, rel=1e-5)
    torch.testing.assert_close(c.grad, torch.full_like(c, ec), rtol=1e-5, atol=0)
    assert bool((v[1:] > v[:-1]).all())  # monotone


@pytest.mark.filterwarnings("ignore:CC \\(paper form\\)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("distance", [1e2, 1e4])
def test_cc_paper_is_finite_for_huge_distances(dtype, distance):
    """One sample far from the others: squared distance ~distance^2 * (1 - 1/K)^2 >> EXP_CLAMP.

    The loss and every gradient stay finite; the far sample's gradient points away from the mean, so a descent step
    pulls it in."""
    feat = torch.zeros(4, 3, dtype=dtype)
    feat[:3] = randn(3, 3, seed=14, dtype=dtype, scale=0.1)
    feat[3, 0] = distance
    feat.requires_grad_(True)
    loss = cc_loss(feat, 1.0, 1.0, "paper")
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert torch.isfinite(feat.grad).all()
    dev = (feat - feat.mean(0, keepdim=True)).detach()
    assert float((feat.grad[3] * dev[3]).sum()) > 0
    # the value is the documented continuation, computed here in float64 from the formula
    dists, _ = ref_sq_dists(feat.detach().double())
    ec = math.exp(EXP_CLAMP)
    want = sum(max(0.0, (math.exp(s) if s <= EXP_CLAMP else ec * (1 + s - EXP_CLAMP)) - 1.0) for s in dists)
    assert loss.item() == pytest.approx(want, rel=1e-5 if dtype == torch.float32 else 1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_safe_exp_gradient_is_finite_and_positive_when_huge(dtype):
    a = torch.tensor([1e3, 1e4, 1e6, 1e8], dtype=dtype, requires_grad=True)
    y = safe_exp(a)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(a.grad).all()
    assert (a.grad > 0).all()


# ---------------------------------------------------------------- IPC 1

@pytest.mark.parametrize("form, beta", [("simplified", 1.0), ("paper", 1.0), ("paper", 3.0)])
def test_cc_is_exactly_zero_with_one_sample(form, beta):
    feat = randn(1, 7, seed=15, scale=5.0).requires_grad_(True)
    loss = cc_loss(feat, 1.0, beta, form)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(feat.grad, torch.zeros_like(feat))
    assert float(batched_cc_loss(randn(4, 1, 7, seed=16), 1.0, beta, form)) == 0.0


def test_cm_with_one_sample_is_constant_with_zero_gradient():
    fr = randn(6, 4, 2, 2, seed=17)
    fs = randn(1, 4, 2, 2, seed=18, scale=3.0).requires_grad_(True)
    loss = cm_loss(fr, fs)
    assert torch.equal(local_covariance(fs.detach()), torch.zeros(4, 4, dtype=torch.float64))
    assert loss.item() == (local_covariance(fr) ** 2).sum().item()
    assert close(loss, sum(v ** 2 for row in ref_cov(fr) for v in row))
    loss.backward()
    assert torch.equal(fs.grad, torch.zeros_like(fs))
    # batched, and in float32 as the library runs it
    frb, fsb = randn(3, 5, 4, 2, 2, seed=19, dtype=torch.float32), randn(3, 1, 4, 2, 2, seed=20, dtype=torch.float32)
    fsb.requires_grad_(True)
    batched_cm_loss(frb, fsb).backward()
    assert torch.equal(fsb.grad, torch.zeros_like(fsb))


def test_paper_cc_warns_when_alpha_is_out_of_scale():
    """Feature distances in the hundreds with alpha=1 push exp far past its range: the user is told how to scale."""
    feats = torch.tensor([[0.0, 0.0], [30.0, 0.0]])
    with pytest.warns(UserWarning, match="alpha"):
        cc_loss(feats, alpha=1.0, beta=1.0, form="paper")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cc_loss(feats, alpha=1e-3, beta=1.0, form="paper")
