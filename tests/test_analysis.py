"""analysis: feature extraction, class-discrimination metrics against hand-computed values, t-SNE and its plot."""
import math

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from distill_lib import seeding
from distill_lib.analysis import (cc_alpha, centre_sq_distances, discrimination_metrics, extract_features,
                                  featnet_cc_alpha, features_of, inter_class_distance, intra_class_spread,
                                  knn_accuracy, plot_tsne, real_features, set_metrics, silhouette, spread_ratio,
                                  tsne_2d)
from distill_lib.featnet import FeatNetSpec, pretrain
from distill_lib.models import get_model
from distill_lib.synthetic import SyntheticSet

# 4 points, 2 classes: class 0 centre (1, 0), both points at distance 1; class 1 centre (4, 4), both at distance 3.
FOUR = torch.tensor([[0.0, 0.0], [2.0, 0.0], [4.0, 1.0], [4.0, 7.0]])
FOUR_LABELS = torch.tensor([0, 0, 1, 1])


def two_clusters(noise: float, gap: float, n: int = 30):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * n, 5, generator=g) * noise
    x[n:, 0] += gap
    return x, torch.arange(2).repeat_interleave(n)


def small_convnet(digits, norm="instancenorm"):
    torch.manual_seed(0)
    return get_model("convnet", digits.channels, digits.num_classes, digits.image_size, width=8, depth=2, norm=norm)


def test_spread_and_distance_by_hand():
    assert intra_class_spread(FOUR, FOUR_LABELS) == pytest.approx((1 + 3) / 2)
    assert inter_class_distance(FOUR, FOUR_LABELS) == pytest.approx(5.0)  # |(1,0) - (4,4)|
    assert spread_ratio(FOUR, FOUR_LABELS) == pytest.approx(2 / 5)
    # a third class, one point at (1, 4): spread 0; centre distances 5, 3, 4
    x, y = torch.cat([FOUR, torch.tensor([[1.0, 4.0]])]), torch.tensor([0, 0, 1, 1, 2])
    assert intra_class_spread(x, y) == pytest.approx(4 / 3)
    assert inter_class_distance(x, y) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="two classes"):
        inter_class_distance(FOUR[:2], FOUR_LABELS[:2])


def test_tight_clusters_score_better_than_overlapping_ones():
    tight, overlap = two_clusters(noise=0.1, gap=10.0), two_clusters(noise=1.0, gap=0.5)
    assert spread_ratio(*tight) < 0.05
    assert spread_ratio(*overlap) > 1.0
    assert silhouette(*tight) > 0.9
    assert silhouette(*overlap) < 0.2


def test_two_tight_vs_two_overlapping_clusters_by_hand():
    """Every metric on two toy sets, against values worked out on paper."""
    # Tight: classes at x = 0 and x = 10, each with points at y = 0 and 1. Every point lies 0.5 from its centre; the
    # centres are 10 apart. Point (0, 0): a = 1 (its classmate), b = mean(10, sqrt(101)) -> s = 1 - a / b, the same
    # for all four points by symmetry.
    tight = torch.tensor([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    queries, truth = torch.tensor([[0.0, 0.4], [10.0, 0.6], [3.0, 0.0]]), torch.tensor([0, 1, 0])
    m = discrimination_metrics(tight, labels, queries, truth)
    assert m["intra_class_spread"] == pytest.approx(0.5) and m["inter_class_distance"] == pytest.approx(10.0)
    assert m["spread_ratio"] == pytest.approx(0.05)
    assert m["silhouette"] == pytest.approx(1 - 2 / (10 + math.sqrt(101)))
    assert m["knn_accuracy"] == 1.0

    # Overlapping: class 0 at x = 0, 2 and class 1 at x = 1, 3 on a line. Centres 1 and 2 (distance 1), every point 1
    # from its centre (ratio 1). Silhouettes (a = 2 for all): x=0: b = mean(1, 3) = 2 -> 0; x=2: b = 1 -> -0.5;
    # x=1: b = 1 -> -0.5; x=3: b = mean(3, 1) = 2 -> 0; mean -0.25. Queries 0.4 (0), 1.6 (0), 2.4 (1), 0.6 (1): the
    # nearest prototypes are 0 (0), 2 (0), 2 (0: wrong), 1 (1) -> 3/4.
    overlap = torch.tensor([[0.0], [2.0], [1.0], [3.0]])
    queries, truth = torch.tensor([[0.4], [1.6], [2.4], [0.6]]), torch.tensor([0, 0, 1, 1])
    m = discrimination_metrics(overlap, labels, queries, truth)
    assert m["intra_class_spread"] == pytest.approx(1.0) and m["inter_class_distance"] == pytest.approx(1.0)
    assert m["spread_ratio"] == pytest.approx(1.0)
    assert m["silhouette"] == pytest.approx(-0.25)
    assert m["knn_accuracy"] == pytest.approx(0.75)


def test_centre_sq_distances_and_cc_alpha_by_hand():
    # FOUR: class 0 points 1 from their centre, class 1 points 3 from theirs -> squared 1, 1, 9, 9; median 5.
    torch.testing.assert_close(centre_sq_distances(FOUR, FOUR_LABELS), torch.tensor([1.0, 1, 9, 9], dtype=torch.float64))
    assert cc_alpha(FOUR, FOUR_LABELS) == pytest.approx(1 / 5)
    shuffled = torch.tensor([2, 0, 3, 1])  # labels need not be sorted or class-major
    torch.testing.assert_close(centre_sq_distances(FOUR[shuffled], FOUR_LABELS[shuffled]),
                               torch.tensor([9.0, 1, 9, 1], dtype=torch.float64))
    with pytest.raises(ValueError, match="spread"):
        cc_alpha(torch.ones(4, 2), FOUR_LABELS)


def test_featnet_cc_alpha_uses_real_training_features(digits):
    spec = FeatNetSpec(arch="convnet", epochs=1, per_class=20)
    alpha = featnet_cc_alpha(digits, spec, per_class=5)
    net, _ = pretrain(digits, spec)
    feats = real_features(digits, net, 5, seeding.generator(spec.seed, seeding.ANALYSIS_REAL), split="train")
    assert alpha == pytest.approx(cc_alpha(*feats), rel=5e-3) and alpha == float(f"{alpha:.3g}")


def test_silhouette_needs_a_class_with_two_samples():
    with pytest.raises(ValueError, match=">= 2 samples in some class"):
        silhouette(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=">= 2 classes"):
        silhouette(torch.randn(3, 4), torch.tensor([1, 1, 1]))


def test_knn_accuracy_by_hand():
    protos, proto_labels = torch.tensor([[0.0], [10.0], [20.0]]), torch.tensor([0, 1, 2])
    queries = torch.tensor([[1.0], [9.0], [16.0], [14.0]])
    assert knn_accuracy(protos, proto_labels, queries, torch.tensor([0, 1, 2, 2])) == pytest.approx(0.75)

    # k=3 majority: from 1.8 the nearest prototype is class 1 (at 2), but two of the three nearest are class 0
    protos, proto_labels = torch.tensor([[0.0], [1.0], [2.0], [10.0]]), torch.tensor([0, 0, 1, 2])
    query = torch.tensor([[1.8]])
    assert knn_accuracy(protos, proto_labels, query, torch.tensor([1]), k=1) == 1.0
    assert knn_accuracy(protos, proto_labels, query, torch.tensor([0]), k=3) == 1.0
    with pytest.raises(ValueError, match="k must be"):
        knn_accuracy(protos, proto_labels, query, torch.tensor([0]), k=5)


def test_knn_ties_go_to_smaller_distance_sum_then_lower_label():
    protos = torch.tensor([[0.0], [3.0]])
    for proto_labels in (torch.tensor([0, 1]), torch.tensor([1, 0])):
        nearer = proto_labels.tolist()  # query at 1 is nearer prototype 0, query at 2 nearer prototype 1
        queries, truth = torch.tensor([[1.0], [2.0], [1.5]]), torch.tensor(nearer + [0])  # 1.5: exact tie -> 0
        assert knn_accuracy(protos, proto_labels, queries, truth, k=2) == 1.0


def test_discrimination_metrics_collects_everything():
    m = discrimination_metrics(FOUR, FOUR_LABELS)
    assert set(m) == {"intra_class_spread", "inter_class_distance", "spread_ratio", "silhouette"}
    assert m["spread_ratio"] == pytest.approx(0.4) and m["silhouette"] == pytest.approx(silhouette(FOUR, FOUR_LABELS))
    m = discrimination_metrics(FOUR, FOUR_LABELS, torch.tensor([[1.0, 0.5], [4.0, 5.0]]), torch.tensor([0, 0]))
    assert m["knn_accuracy"] == pytest.approx(0.5)
    ipc1 = discrimination_metrics(FOUR[1:3], FOUR_LABELS[1:3])  # one point per class: silhouette undefined
    assert ipc1["intra_class_spread"] == 0.0 and math.isnan(ipc1["silhouette"])


def test_extract_features_matches_embed_and_restores_train_mode(digits):
    net = small_convnet(digits, norm="batchnorm")  # batch norm: train vs eval mode changes the output
    x = digits.normalize(digits.x_train[:20])
    net.train()
    net.body[1].training = False  # a submodule in its own mode must keep it
    stats = net.body[1].running_mean.clone()
    feats = extract_features(net, x, batch_size=7)
    assert net.training and not net.body[1].training and net.body[4].training
    assert torch.equal(net.body[1].running_mean, stats)
    net.eval()
    with torch.no_grad():
        expected = net.embed(x)
    assert feats.shape == expected.shape and not feats.requires_grad
    torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-5)


def test_features_of_uses_the_decoded_view(digits):
    net = small_convnet(digits)
    syn = SyntheticSet(torch.randn(4, 1, 16, 16), torch.tensor([0, 0, 1, 1]), digits.mean, digits.std,
                       digits.classes, factor=2)
    feats, labels = features_of(syn, net)
    images, expected_labels = syn.decoded()
    assert feats.shape[0] == 16 and torch.equal(labels, expected_labels)
    torch.testing.assert_close(feats, extract_features(net, images))


def test_real_features_seeded_per_class_sample(digits):
    net = small_convnet(digits)
    a = real_features(digits, net, 3, torch.Generator().manual_seed(1), split="test")
    b = real_features(digits, net, 3, torch.Generator().manual_seed(1), split="test")
    c = real_features(digits, net, 3, torch.Generator().manual_seed(2), split="test")
    assert a[0].shape[0] == 30 and torch.equal(a[1], torch.arange(10).repeat_interleave(3))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
    with pytest.raises(ValueError, match="split"):
        real_features(digits, net, 3, torch.Generator(), split="val")


def test_set_metrics_combines_synthetic_and_real_test_features(digits):
    net = small_convnet(digits)
    syn = SyntheticSet(digits.normalize(digits.x_train[:40]), digits.y_train[:40], digits.mean, digits.std,
                       digits.classes)
    got = set_metrics(syn, digits, net, 4, seeding.generator(0, seeding.ANALYSIS_REAL))
    feats, labels = features_of(syn, net)
    queries = real_features(digits, net, 4, seeding.generator(0, seeding.ANALYSIS_REAL), split="test")
    assert got == pytest.approx(discrimination_metrics(feats, labels, *queries), nan_ok=True)
    assert set(got) >= {"spread_ratio", "silhouette", "knn_accuracy"}


def test_tsne_2d_shapes_and_determinism():
    g = torch.Generator().manual_seed(0)
    wide = [torch.randn(20, 12, generator=g), torch.randn(6, 12, generator=g)]  # 12 > pca_dim 8: PCA first
    first, again = tsne_2d(wide, seed=3, pca_dim=8), tsne_2d(wide, seed=3, pca_dim=8)
    assert [a.shape for a in first] == [(20, 2), (6, 2)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    narrow = tsne_2d([torch.randn(8, 5, generator=g), torch.randn(3, 5, generator=g)], seed=0)  # D 5 < 50, 11 points
    assert [a.shape for a in narrow] == [(8, 2), (3, 2)] and all(np.isfinite(a).all() for a in narrow)


def test_plot_tsne_draws_one_scatter_per_class_and_kind():
    fig = Figure()
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    real_2d, real_labels = np.random.default_rng(0).normal(size=(12, 2)), np.repeat([0, 1, 2], 4)
    syn_2d, syn_labels = np.zeros((2, 2)), np.array([0, 2])  # class 1 has no synthetic point
    plot_tsne(ax, real_2d, real_labels, syn_2d, syn_labels, ["zero", "one", "two"], title="DM",
              metrics={"spread_ratio": 0.5, "silhouette": 0.25})
    assert len(ax.collections) == 3 + 2
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["zero", "one", "two"]
    assert ax.get_title() == "DM"
    assert any("spread_ratio 0.500" in t.get_text() for t in ax.texts)
    canvas.draw()  # renders without error
    assert canvas.buffer_rgba().shape[2] == 4
