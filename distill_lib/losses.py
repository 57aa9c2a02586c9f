"""The losses: DM (means), CC (class centralization), CM (covariance matching) and IDM's class-aware CE.

The four per-class functions state each formula once, plainly. The ``batched_*`` variants compute the same numbers
for all classes at once from tensors shaped (classes, samples, ...), which is what the distillation step uses; the
tests check that both agree. :func:`combine` is the one place where the enabled terms are weighted and summed.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

CC_FORMS = ("paper", "simplified")
# exp(x) overflows float32 near x = 88.7; the paper's hinge is linearised above this argument (see cc_loss). The
# tangent exp(c) * (1 + a - c) must stay finite too: with c = 50 it does in float32 up to a ~ 6e16 (c = 80 left only
# a factor ~6e3 of headroom, so a = 1e4 already gave an infinite loss).
EXP_CLAMP = 50.0


def dm_loss(feat_real: torch.Tensor, feat_syn: torch.Tensor) -> torch.Tensor:
    """|| mean_i feat_real_i - mean_j feat_syn_j ||^2 for one class; feats (N, D)."""
    return ((feat_real.mean(0) - feat_syn.mean(0)) ** 2).sum()


def local_covariance(fmap: torch.Tensor) -> torch.Tensor:
    """(1/N) sum_i (X_i - X_bar)(X_i - X_bar)^T with X_i = fmap_i reshaped to (d, hw); fmap (N, d, h, w) -> (d, d)."""
    x = fmap.flatten(2)
    xc = x - x.mean(0, keepdim=True)
    return torch.einsum("nak,nbk->ab", xc, xc) / x.shape[0]


def cm_loss(fmap_real: torch.Tensor, fmap_syn: torch.Tensor) -> torch.Tensor:
    """|| Sigma_real - Sigma_syn ||_F^2 of the local covariances of one class."""
    return ((local_covariance(fmap_real) - local_covariance(fmap_syn)) ** 2).sum()


def cc_loss(feat_syn: torch.Tensor, alpha: float = 1.0, beta: float = 1.0, form: str = "paper") -> torch.Tensor:
    """Class centralization of one class's synthetic features (K, D); the mean f_bar keeps its gradient.

    ``paper``: sum_j max(0, exp(alpha ||f_j - f_bar||^2) - beta). ``simplified``: sum_j ||f_j - f_bar||^2 (what the
    authors' released code runs). Overflow: exp is evaluated at min(a, EXP_CLAMP) and continued by its tangent line
    beyond, exp(c) * (1 + a - c); that is exact below the clamp, finite everywhere, and keeps a positive gradient that
    pulls far-out samples in instead of producing inf/NaN.
    """
    return _cc_from_sq_dist(((feat_syn - feat_syn.mean(0, keepdim=True)) ** 2).sum(-1), alpha, beta, form)


def safe_exp(a: torch.Tensor) -> torch.Tensor:
    """exp(a) below EXP_CLAMP, its tangent line above (finite, monotone, C^1)."""
    clamped = a.clamp(max=EXP_CLAMP)
    return torch.exp(clamped) * (1 + a - clamped)


def _cc_from_sq_dist(sq_dist: torch.Tensor, alpha: float, beta: float, form: str) -> torch.Tensor:
    if form == "simplified":
        return sq_dist.sum()
    if form == "paper":
        exponent = alpha * sq_dist
        largest = float(exponent.detach().max()) if exponent.numel() else 0.0
        if largest > EXP_CLAMP:
            warnings.warn(f"CC (paper form): alpha * ||f - f_bar||^2 reaches {largest:.3g}, past exp's safe range "
                          f"({EXP_CLAMP}); the loss continues linearly there but is huge. Scale alpha to the feature "
                          f"distances, e.g. alpha ~ 1 / median squared distance", stacklevel=3)
        return torch.relu(safe_exp(exponent) - beta).sum()
    raise ValueError(f"unknown CC form {form!r}; use one of {CC_FORMS}")


# ------------------------------------------------------------------------------------------------------------
# All classes at once: leading dim = classes, second = samples of that class.

def batched_dm_loss(feat_real: torch.Tensor, feat_syn: torch.Tensor) -> torch.Tensor:
    """sum_c dm_loss(feat_real[c], feat_syn[c]); feats (C, N, D)."""
    return ((feat_real.mean(1) - feat_syn.mean(1)) ** 2).sum()


def batched_local_covariance(fmap: torch.Tensor) -> torch.Tensor:
    """local_covariance for every class: fmap (C, N, d, h, w) -> (C, d, d), as one batched matrix product."""
    c, n, d = fmap.shape[:3]
    xc = fmap.flatten(3)
    xc = (xc - xc.mean(1, keepdim=True)).transpose(1, 2).reshape(c, d, -1)
    return torch.bmm(xc, xc.transpose(1, 2)) / n


def batched_cm_loss(fmap_real: torch.Tensor, fmap_syn: torch.Tensor) -> torch.Tensor:
    """sum_c cm_loss(fmap_real[c], fmap_syn[c])."""
    return ((batched_local_covariance(fmap_real) - batched_local_covariance(fmap_syn)) ** 2).sum()


def batched_cc_loss(feat_syn: torch.Tensor, alpha: float = 1.0, beta: float = 1.0, form: str = "paper") -> torch.Tensor:
    """sum_c cc_loss(feat_syn[c]); feat_syn (C, K, D)."""
    return _cc_from_sq_dist(((feat_syn - feat_syn.mean(1, keepdim=True)) ** 2).sum(-1), alpha, beta, form)


def batched_ce_loss(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """sum_c mean_k CE(logits[c, k], classes[c]): IDM's class-aware term before its accuracy weight.

    logits (C, K, num_classes) of K synthetic samples for each of the C classes ``classes`` (C,). The authors' code
    takes the mean cross-entropy per class and steps per class, i.e. sums the class means.
    """
    c, k = logits.shape[:2]
    return F.cross_entropy(logits.flatten(0, 1), classes.repeat_interleave(k), reduction="sum") / k


def combine(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """The total loss: sum of weights[name] * terms[name] over the enabled terms (the only place they are summed)."""
    total = None
    for name, value in terms.items():
        weighted = value * weights.get(name, 1.0)
        total = weighted if total is None else total + weighted
    if total is None:
        raise ValueError("no loss term is enabled")
    return total

