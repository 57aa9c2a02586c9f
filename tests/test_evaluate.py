"""Tests for distill_lib.evaluate and distill_lib.train on digits and hand-made problems (small nets, few epochs)."""
from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
import torch.nn as nn

from distill_lib import train as train_mod
from distill_lib.evaluate import EvalProtocol, EvalResult, evaluate, random_subset
from distill_lib.synthetic import SyntheticSet
from distill_lib.train import TrainSpec, accuracy, predict, train_classifier

# An evaluation that is quick on two shared CPU cores yet learns digits well (about 0.75-0.85 test accuracy).
QUICK = dict(model="mlp", epochs=20, batch_size=32, num_models=2, seed=0, device="cpu")



@pytest.fixture(scope="module")
def subset10(digits):
    return random_subset(digits, 10, seed=0)


@pytest.fixture(scope="module")
def quick_result(digits, subset10):
    return evaluate(subset10, digits, EvalProtocol(**QUICK))


# ------------------------------------------------------------------------------------------------ protocol

@pytest.mark.parametrize("bad, match", [
    ({"num_models": 0}, "num_models"),
    ({"epochs": 0}, "epochs"),
    ({"batch_size": 0}, "batch_size"),
    ({"lr": 0.0}, "lr must be positive"),
    ({"lr": -0.1}, "lr must be positive"),
    ({"dsa_strategy": "color_bogus"}, "unknown augmentation family 'bogus'"),
    ({"dsa": False, "dsa_strategy": "bogus"}, "unknown augmentation family"),  # a typo never hides
    ({"device": "not_a_device"}, "unknown device"),
])
def test_protocol_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        EvalProtocol(**bad)


def test_protocol_train_spec_and_description():
    p = EvalProtocol(epochs=7, lr=0.05, batch_size=16, dsa_strategy="crop_flip")
    spec = p.train_spec()
    assert (spec.epochs, spec.lr, spec.batch_size, spec.dsa_strategy) == (7, 0.05, 16, "crop_flip")
    assert (spec.lr_decay_at, spec.lr_decay) == (0.5, 0.1)
    assert EvalProtocol(dsa=False).train_spec().dsa_strategy == "none"
    assert "7 epochs" in p.describe() and "DSA on" in p.describe()
    assert EvalProtocol(dsa=False).describe().count("DSA off") == 1


def test_eval_result_statistics():
    r = EvalResult((0.5, 0.7))
    assert r.mean == pytest.approx(0.6) and r.std == pytest.approx(0.1)
    assert str(r) == "60.00 ± 10.00 %"
    assert EvalResult((0.25,)).std == 0.0
    assert str(EvalResult((0.25,))) == "25.00 %"  # one network has no spread: no "± 0.00"


# ------------------------------------------------------------------------------------------------ random subset

def test_random_subset_layout(digits, subset10):
    s = subset10
    assert s.images.shape == (100, 1, 16, 16) and s.images.dtype == torch.float32
    assert torch.equal(s.labels, torch.arange(10).repeat_interleave(10))
    assert (s.num_classes, s.ipc, s.factor) == (10, 10, 1)
    assert s.mean == digits.mean and s.std == digits.std and s.classes == digits.classes
    assert s.config == {"method": "random_subset", "dataset": "digits", "ipc": 10, "seed": 0}


def test_random_subset_images_are_real_training_images_of_their_class(digits, subset10):
    real = digits.normalize(digits.x_train).flatten(1)
    dist = (subset10.images.flatten(1)[:, None, :] - real[None]).abs().amax(-1)
    hits = dist < 1e-5
    assert bool((hits.sum(1) == 1).all())  # each is exactly one training image
    index = hits.float().argmax(1)
    assert torch.equal(digits.y_train[index], subset10.labels)  # of the right class
    assert len(set(index.tolist())) == 100  # never the same image twice
    test_rows = digits.normalize(digits.x_test).flatten(1)
    assert not bool(((subset10.images.flatten(1)[:, None, :] - test_rows[None]).abs().amax(-1) < 1e-5).any())


def test_random_subset_seeding_and_limits(digits, subset10):
    assert torch.equal(random_subset(digits, 10, seed=0).images, subset10.images)
    assert not torch.equal(random_subset(digits, 10, seed=1).images, subset10.images)
    smallest = min(digits.class_count(c) for c in range(10))
    assert random_subset(digits, smallest).images.shape[0] == 10 * smallest
    with pytest.raises(ValueError, match=f"ipc must be in 1..{smallest}"):
        random_subset(digits, smallest + 1)
    with pytest.raises(ValueError, match="ipc must be in"):
        random_subset(digits, 0)


# ------------------------------------------------------------------------------------------------ evaluate

def test_evaluate_learns_digits(quick_result):
    assert len(quick_result.accuracies) == 2
    for acc in quick_result.accuracies:
        assert 0.3 < acc <= 1.0  # chance is 0.1
    assert quick_result.accuracies[0] != quick_result.accuracies[1]  # two different networks


def test_evaluate_stores_the_protocol(quick_result):
    assert quick_result.protocol == asdict(EvalProtocol(**QUICK))
    assert quick_result.protocol["epochs"] == 20 and quick_result.protocol["model"] == "mlp"


def test_evaluate_is_deterministic_given_the_seed(digits, subset10, quick_result):
    again = evaluate(subset10, digits, EvalProtocol(**QUICK))
    assert again.accuracies == quick_result.accuracies
    # Model k depends only on (seed, k): the first model of a one-model run is the same network.
    one = evaluate(subset10, digits, EvalProtocol(**{**QUICK, "num_models": 1}))
    assert one.accuracies == quick_result.accuracies[:1]
    other = evaluate(subset10, digits, EvalProtocol(**{**QUICK, "num_models": 1, "seed": 1}))
    assert other.accuracies != quick_result.accuracies[:1]


def test_evaluate_labels_matter(digits, subset10):
    """Trained on shuffled labels, the same images give about chance: the score measures what was learnt."""
    perm = torch.randperm(len(subset10.labels), generator=torch.Generator().manual_seed(0))
    shuffled = SyntheticSet(subset10.images, subset10.labels[perm], subset10.mean, subset10.std, subset10.classes)
    result = evaluate(shuffled, digits, EvalProtocol(**{**QUICK, "num_models": 1}))
    assert result.accuracies[0] < 0.3


def test_evaluate_rejects_a_synthetic_set_that_does_not_fit(digits, subset10):
    nine = SyntheticSet(subset10.images[:90], subset10.labels[:90], subset10.mean, subset10.std, [str(i) for i in
                                                                                                  range(9)])
    with pytest.raises(ValueError, match="9 classes"):
        evaluate(nine, digits, EvalProtocol(**QUICK))
    rgb = SyntheticSet(subset10.images.repeat(1, 3, 1, 1), subset10.labels, subset10.mean * 3, subset10.std * 3,
                       subset10.classes)
    with pytest.raises(ValueError, match="does not fit"):
        evaluate(rgb, digits, EvalProtocol(**QUICK))


# ------------------------------------------------------------------------------------------------ train

def _blobs(n=64, seed=0):
    """Two well-separated Gaussian blobs as (N, 1, 2, 2) 'images'."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 1, 2, 2, generator=g) * 0.5 + (y.float() * 2 - 1).view(-1, 1, 1, 1) * 2
    return x, y


def _linear(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 2))


def test_train_classifier_losses_decrease_on_a_separable_problem():
    x, y = _blobs()
    model = _linear()
    before = accuracy(model, x, y)
    losses = train_classifier(model, x, y, TrainSpec(epochs=20, lr=0.1, batch_size=16, dsa_strategy="none"),
                              torch.Generator().manual_seed(0))
    assert len(losses) == 20 and all(loss > 0 for loss in losses)
    assert losses[-1] < 0.25 * losses[0]
    assert sum(losses[-5:]) < sum(losses[:5])
    assert accuracy(model, x, y) == 1.0 and before < 1.0


def test_train_classifier_is_deterministic_given_the_generator():
    x, y = _blobs()
    spec = TrainSpec(epochs=3, lr=0.1, batch_size=8, dsa_strategy="none")
    a, b = _linear(), _linear()
    la = train_classifier(a, x, y, spec, torch.Generator().manual_seed(5))
    lb = train_classifier(b, x, y, spec, torch.Generator().manual_seed(5))
    assert la == lb and all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = _linear()
    train_classifier(c, x, y, spec, torch.Generator().manual_seed(6))  # another batch order
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_train_classifier_decays_the_learning_rate_at_the_given_epoch():
    """With lr x0 after half the epochs, training 4 epochs ends where 2 undecayed epochs did (not before, not
    after: the 2-epoch run would differ if the decay came at epoch 1, the 4-epoch one if it came at epoch 3)."""
    x, y = _blobs()
    two, four = _linear(), _linear()
    train_classifier(two, x, y, TrainSpec(epochs=2, lr=0.1, batch_size=16, lr_decay=1.0, dsa_strategy="none"),
                     torch.Generator().manual_seed(0))
    losses = train_classifier(four, x, y, TrainSpec(epochs=4, lr=0.1, batch_size=16, lr_decay=0.0,
                                                    dsa_strategy="none"), torch.Generator().manual_seed(0))
    assert all(torch.equal(p, q) for p, q in zip(two.parameters(), four.parameters()))
    assert losses[2] == pytest.approx(losses[3])


def test_epoch_loss_is_the_mean_over_samples():
    """Batches of 4, 4 and 2: the epoch loss weights each batch by its size (checked with a vanishing lr)."""
    x, y = _blobs(n=10)
    model = _linear()
    expected = nn.functional.cross_entropy(model(x), y).item()
    losses = train_classifier(model, x, y, TrainSpec(epochs=1, lr=1e-12, momentum=0.0, weight_decay=0.0,
                                                     batch_size=4, dsa_strategy="none"), torch.Generator())
    assert losses == [pytest.approx(expected, rel=1e-5)]


def test_train_classifier_rejects_mismatched_or_empty_data():
    spec = TrainSpec(epochs=1, dsa_strategy="none")
    with pytest.raises(ValueError, match="need as many labels as images"):
        train_classifier(_linear(), torch.zeros(4, 1, 2, 2), torch.zeros(3, dtype=torch.long), spec,
                         torch.Generator())
    with pytest.raises(ValueError):
        train_classifier(_linear(), torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.long), spec,
                         torch.Generator())


class FixedLogits(nn.Module):
    """Uses its input rows as logits, and records whether it was called in eval mode."""

    def __init__(self):
        super().__init__()
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return x


def test_accuracy_is_exact_on_a_hand_made_model():
    logits = torch.tensor([[5.0, 0, 0], [0, 5, 0], [0, 0, 5], [5, 0, 0], [0, 5, 0]])  # predicts 0 1 2 0 1
    y = torch.tensor([0, 1, 0, 0, 2])  # right on rows 0, 1, 3
    model = FixedLogits()
    model.train()
    assert accuracy(model, logits, y, batch_size=2) == pytest.approx(0.6)
    assert model.modes == [False, False, False]  # three batches of at most 2, all in eval mode
    assert torch.equal(predict(model, logits, batch_size=4), torch.tensor([0, 1, 2, 0, 1]))
    assert accuracy(model, logits, torch.tensor([0, 1, 2, 0, 1])) == 1.0
    assert accuracy(model, logits, torch.tensor([1, 2, 0, 1, 2])) == 0.0


# ------------------------------------------------------------------------------------------------ compiled fast path

def _small_convnet():
    from distill_lib.models import get_model
    from distill_lib.seeding import generator
    net = get_model("convnet", 1, 10, (16, 16), width=8, depth=2)
    net.reset_parameters(generator(0, 99))
    return net


def test_compiled_training_and_prediction_equal_the_eager_loop(digits):
    """The fast path (torch.compile, padded last test batch) computes what the plain eager loop computes."""
    from distill_lib.train import compile_available
    if not compile_available():
        pytest.skip("torch.compile needs a C++ compiler here")
    x, y = digits.x_train[:40].float() / 16, digits.y_train[:40]  # batches of 16, 16 and 8: two shapes
    runs = []
    for compile in (False, True):
        net = _small_convnet()
        losses = train_classifier(net, x, y, TrainSpec(epochs=2, lr=0.05, batch_size=16, compile=compile),
                                  torch.Generator().manual_seed(3))
        runs.append((net, losses))
    (eager, eager_losses), (fast, fast_losses) = runs
    assert fast_losses == pytest.approx(eager_losses, rel=1e-4)
    for p, q in zip(eager.parameters(), fast.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
    x_test = digits.x_test[:45].float() / 16  # 45 = 2 x 16 + 13: the last batch is padded
    assert torch.equal(predict(eager, x_test, batch_size=16, compile=True), predict(eager, x_test, batch_size=16))


def test_compile_auto_compiles_only_long_cpu_runs_and_is_validated():
    protocol = EvalProtocol(epochs=300, num_models=3)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert protocol.use_compile(cpu, 100) and not protocol.use_compile(cpu, 10)  # 90,000 vs 9,000 image-passes
    assert not protocol.use_compile(cuda, 100)
    assert EvalProtocol(compile="on").use_compile(cpu, 1) and not EvalProtocol(compile="off").use_compile(cpu, 10**6)
    with pytest.raises(ValueError, match="compile must be one of"):
        EvalProtocol(compile="yes")


def test_compile_setting_does_not_change_a_sweep_cell_key():
    """Compiling changes float rounding, not the measurement: cached cells stay valid whichever way they ran."""
    from distill_lib.distill import DistillConfig
    from distill_lib.sweep import Cell
    keys = {str(Cell(DistillConfig(), EvalProtocol(compile=mode)).key()) for mode in ("auto", "on", "off")}
    assert len(keys) == 1
    assert Cell(DistillConfig(), EvalProtocol(epochs=7)).key() != Cell(DistillConfig(), EvalProtocol()).key()


def test_progress_counts_batches_so_a_long_epoch_shows_an_eta_at_once(monkeypatch):
    """The bar advances once per SGD step (3 epochs of 64 images in batches of 16: 12 ticks), not once per epoch."""
    ticks = []
    real_tqdm = train_mod.tqdm

    def recording_tqdm(*args, **kwargs):
        bar = real_tqdm(*args, **kwargs)
        ticks.append(bar)
        return bar

    monkeypatch.setattr(train_mod, "tqdm", recording_tqdm)
    x, y = _blobs()
    train_classifier(_linear(), x, y, TrainSpec(epochs=3, lr=0.1, batch_size=16, dsa_strategy="none"),
                     torch.Generator().manual_seed(0), progress="blobs")
    (bar,) = ticks
    assert bar.total == 12 and bar.n == 12 and bar.unit == "batch"


@pytest.mark.parametrize("field", ["lr", "momentum", "weight_decay"])
def test_protocol_refuses_non_finite_numbers(field):
    with pytest.raises(ValueError, match=f"{field} must be a finite number, got nan"):
        EvalProtocol(**{field: float("nan")})


def test_evaluate_refuses_a_set_with_non_finite_pixels(digits):
    syn = random_subset(digits, 1, 0)
    syn.images[3, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="holds 1 non-finite pixel values .* in 1 of 10 images"):
        evaluate(syn, digits, EvalProtocol(epochs=1, num_models=1, model="mlp", device="cpu"))
