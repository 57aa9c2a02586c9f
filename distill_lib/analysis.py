"""Seeing why it works: how well a network's features separate the classes of a synthetic set.

The CVPR 2024 paper argues that DM leaves a class's synthetic features scattered, blurring class boundaries, and that
class centralization (CC) pulls them together. This module measures that in the embedding (``net.embed``) of any
network: the spread of each class around its centre against the distance between centres, the silhouette score, how
well the synthetic images serve as nearest-neighbour prototypes for real test images, and a shared t-SNE map of real
and synthetic points for plotting.
"""
from __future__ import annotations

import math

import matplotlib
import numpy as np
import torch
import torch.nn as nn
from matplotlib.lines import Line2D
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score

from . import seeding
from .data import RealData
from .featnet import FeatNetSpec, pretrain
from .synthetic import SyntheticSet


# ----------------------------------------------------------------------------------------------------------------
# Features

@torch.no_grad()
def extract_features(net: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``net.embed`` of ``images`` in eval mode and in batches, as a float32 (N, D) tensor on the CPU.

    Eval mode makes the features independent of the batch (batch norm uses running statistics) and leaves those
    statistics untouched; every submodule's train/eval flag is restored afterwards.
    """
    modes = [m.training for m in net.modules()]
    device = next(net.parameters(), torch.empty(0)).device
    net.eval()
    try:
        return torch.cat([net.embed(part.to(device)).float().cpu() for part in images.split(batch_size)])
    finally:
        for m, mode in zip(net.modules(), modes):
            m.training = mode


def features_of(syn: SyntheticSet, net: nn.Module, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) of the images a student trains on (the decoded view, so IDM's tiles count separately)."""
    images, labels = syn.decoded()
    return extract_features(net, images, batch_size), labels


def real_features(data: RealData, net: nn.Module, per_class: int, generator: torch.Generator, split: str = "train",
                  batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) of up to ``per_class`` random images of each class from ``split`` ("train" or "test").

    Classes are visited in order and each draws one permutation from ``generator``, so a seeded generator gives the
    same sample; a class with fewer than ``per_class`` images contributes all of them.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    picks = []
    for c in range(data.num_classes):
        idx = torch.nonzero(y == c).flatten()
        picks.append(idx[torch.randperm(len(idx), generator=generator)[:per_class]])
    pick = torch.cat(picks)
    return extract_features(net, data.normalize(x[pick]), batch_size), y[pick].clone()


# ----------------------------------------------------------------------------------------------------------------
# Class discrimination

def _class_centres(features: torch.Tensor, labels: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per-class point sets and their centres (float64), over the classes present in ``labels``, in label order."""
    features = torch.as_tensor(features).double()
    labels = torch.as_tensor(labels)
    groups = [features[labels == c] for c in torch.unique(labels)]
    return groups, torch.stack([g.mean(0) for g in groups])


def centre_sq_distances(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distance of every point to its class centre (float64): the d^2 inside CC's exp(alpha d^2)."""
    features, labels = torch.as_tensor(features).double(), torch.as_tensor(labels)
    sq = torch.empty(len(labels), dtype=torch.float64)
    for c in torch.unique(labels):
        group = features[labels == c]
        sq[labels == c] = ((group - group.mean(0)) ** 2).sum(1)
    return sq


def cc_alpha(features: torch.Tensor, labels: torch.Tensor) -> float:
    """1 / the median of :func:`centre_sq_distances`: an alpha for CC's paper form on the scale of these features.

    With it exp(alpha d^2) is e at the median distance, so the hinge threshold beta reads in the same units for any
    feature net (beta <= 1: every sample is pulled; beta = e: the closer half is left alone).
    """
    median = torch.quantile(centre_sq_distances(features, labels), 0.5).item()
    if median <= 0:
        raise ValueError("cc_alpha needs classes with spread (all points sit on their class centre)")
    return 1.0 / median


def featnet_cc_alpha(data: RealData, spec: FeatNetSpec, per_class: int = 50) -> float:
    """:func:`cc_alpha` of ``per_class`` real training images per class in the feature net of ``spec`` (pretrained on
    ``data``, cached), rounded to 3 significant digits so configs built from it read (and hash) cleanly."""
    net, _ = pretrain(data, spec)
    feats = real_features(data, net, per_class, seeding.generator(spec.seed, seeding.ANALYSIS_REAL), split="train")
    return float(f"{cc_alpha(*feats):.3g}")


def intra_class_spread(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes of the mean Euclidean distance of a class's points to their centre (0 for single points)."""
    groups, centres = _class_centres(features, labels)
    return torch.stack([(g - m).norm(dim=1).mean() for g, m in zip(groups, centres)]).mean().item()


def inter_class_distance(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean Euclidean distance between the centres of every pair of classes (needs at least two classes)."""
    _, centres = _class_centres(features, labels)
    if len(centres) < 2:
        raise ValueError("inter-class distance needs features of at least two classes")
    return torch.pdist(centres).mean().item()


def spread_ratio(features: torch.Tensor, labels: torch.Tensor) -> float:
    """intra_class_spread / inter_class_distance: small when classes are tight clusters far apart."""
    return intra_class_spread(features, labels) / inter_class_distance(features, labels)


def silhouette(features: torch.Tensor, labels: torch.Tensor) -> float:
    """sklearn's mean silhouette score (Euclidean), in [-1, 1]; high when every point is nearer its own class.

    Defined only with at least two classes and at least one class of two or more points (so not at IPC 1).
    """
    labels = np.asarray(torch.as_tensor(labels).cpu())
    n_classes = len(np.unique(labels))
    if not 2 <= n_classes < len(labels):
        raise ValueError(f"silhouette needs >= 2 classes and >= 2 samples in some class; got {len(labels)} samples "
                         f"in {n_classes} classes")
    return float(silhouette_score(np.asarray(torch.as_tensor(features).double().cpu()), labels))


def knn_accuracy(proto_feats: torch.Tensor, proto_labels: torch.Tensor, query_feats: torch.Tensor,
                 query_labels: torch.Tensor, k: int = 1) -> float:
    """Fraction of queries (real test images) whose k nearest prototypes (synthetic images) vote their label.

    Euclidean distances (``torch.cdist``); equidistant prototypes are taken in their order. The label with the most
    votes wins; a tie goes to the tied label whose voting prototypes have the smallest distance sum, then to the
    lowest label. Labels are non-negative integers.
    """
    proto_feats, query_feats = torch.as_tensor(proto_feats).double(), torch.as_tensor(query_feats).double()
    proto_labels, query_labels = torch.as_tensor(proto_labels).long(), torch.as_tensor(query_labels).long()
    if not 1 <= k <= len(proto_labels):
        raise ValueError(f"k must be between 1 and the number of prototypes ({len(proto_labels)}), got {k}")
    dist, order = torch.cdist(query_feats, proto_feats).sort(dim=1, stable=True)
    dist, voters = dist[:, :k], proto_labels[order[:, :k]]
    shape = (len(query_labels), int(max(proto_labels.max(), query_labels.max())) + 1)
    votes = torch.zeros(shape).scatter_add_(1, voters, torch.ones_like(dist, dtype=torch.float32))
    dist_sum = torch.zeros(shape, dtype=torch.float64).scatter_add_(1, voters, dist)
    dist_sum[votes < votes.max(1, keepdim=True).values] = math.inf
    return (dist_sum.argmin(1) == query_labels).double().mean().item()  # argmin: first (lowest) label on ties


def discrimination_metrics(features: torch.Tensor, labels: torch.Tensor, query_feats: torch.Tensor | None = None,
                           query_labels: torch.Tensor | None = None, k: int = 1) -> dict[str, float]:
    """All the metrics of (features, labels) in one dict; ``knn_accuracy`` too when query features are given.

    ``silhouette`` is NaN where it is undefined (every class a single point, as with IPC 1), so one call serves any IPC.
    """
    metrics = {"intra_class_spread": intra_class_spread(features, labels),
               "inter_class_distance": inter_class_distance(features, labels)}
    metrics["spread_ratio"] = metrics["intra_class_spread"] / metrics["inter_class_distance"]
    n_classes = len(torch.unique(torch.as_tensor(labels)))
    metrics["silhouette"] = silhouette(features, labels) if n_classes < len(labels) else math.nan
    if query_feats is not None:
        metrics["knn_accuracy"] = knn_accuracy(features, labels, query_feats, query_labels, k)
    return metrics


def set_metrics(syn: SyntheticSet, data: RealData, net: nn.Module, real_per_class: int,
                generator: torch.Generator, k: int = 1) -> dict[str, float]:
    """:func:`discrimination_metrics` of a synthetic set in ``net``'s embedding, with ``real_per_class`` images per
    class of ``data``'s test split (a validation split's held-out images for validation cells) as k-NN queries."""
    feats, labels = features_of(syn, net)
    query_feats, query_labels = real_features(data, net, real_per_class, generator, split="test")
    return discrimination_metrics(feats, labels, query_feats, query_labels, k)


# ----------------------------------------------------------------------------------------------------------------
# t-SNE

def tsne_2d(feature_sets: list[torch.Tensor], seed: int = 0, pca_dim: int = 50,
            perplexity: float = 30.0) -> list[np.ndarray]:
    """2-D t-SNE coordinates of several feature sets (e.g. real and synthetic), one (n_i, 2) array per set.

    One embedding is fitted on all points together, so the sets share coordinates and can be overlaid. Features
    wider than ``pca_dim`` are first reduced by PCA (the usual de-noising and speed-up step); the perplexity is
    clamped below the number of points. Deterministic for a given ``seed`` (PCA and t-SNE use it; t-SNE starts
    from a PCA initialisation).
    """
    arrays = [np.asarray(torch.as_tensor(f).detach().cpu().float()) for f in feature_sets]
    x = np.concatenate(arrays)
    if len(x) < 2:
        raise ValueError(f"t-SNE needs at least 2 points, got {len(x)}")
    if x.shape[1] > pca_dim:
        x = PCA(n_components=min(pca_dim, len(x)), random_state=seed).fit_transform(x)
    tsne = TSNE(n_components=2, perplexity=min(perplexity, len(x) - 1), init="pca", random_state=seed)
    coords = tsne.fit_transform(x)
    return np.split(coords, np.cumsum([len(a) for a in arrays])[:-1])


def _class_colours(n: int) -> list:
    """One colour per class: tab10 up to 10 classes, tab20 up to 20, evenly spaced turbo beyond."""
    if n > 20:
        return list(matplotlib.colormaps["turbo"](np.linspace(0, 1, n)))
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i) for i in range(n)]


def plot_tsne(ax, real_2d, real_labels, syn_2d, syn_labels, class_names: list[str], title: str | None = None,
              metrics: dict[str, float] | None = None):
    """Draw real points (faint, small) and synthetic points (bold, black-edged) on ``ax``, one colour per class.

    Per class present, one scatter for its real points and one for its synthetic points; a legend right of the panel
    names the classes and ``metrics`` (e.g. from :func:`discrimination_metrics`) are printed under the panel. Returns ``ax``.
    """
    real_2d, syn_2d = np.asarray(real_2d), np.asarray(syn_2d)
    real_labels, syn_labels = np.asarray(real_labels), np.asarray(syn_labels)
    colours = _class_colours(len(class_names))
    handles = []
    for c in np.union1d(real_labels, syn_labels).astype(int):
        real, syn = real_2d[real_labels == c], syn_2d[syn_labels == c]
        if len(real):
            ax.scatter(real[:, 0], real[:, 1], s=8, color=colours[c], alpha=0.35, linewidths=0)
        if len(syn):
            ax.scatter(syn[:, 0], syn[:, 1], s=90, color=colours[c], edgecolors="black", linewidths=1.2, zorder=3)
        handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor=colours[c],
                              markeredgecolor="black", label=class_names[c]))
    ax.legend(handles=handles, title="class (large: synthetic)", fontsize="small", title_fontsize="small",
              loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside the axes: never hides points
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    if metrics:
        items = [f"{name} {value:.3f}" if isinstance(value, float) else f"{name} {value}"
                 for name, value in metrics.items()]
        text = "\n".join("   ".join(items[i:i + 3]) for i in range(0, len(items), 3))
        ax.text(0.5, -0.02, text, transform=ax.transAxes, ha="center", va="top", fontsize="small")
    return ax
