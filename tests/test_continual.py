"""Tests for distill_lib.continual on the tiny digits set: task splits, memory budgets for every builder, herding
against a plain greedy loop, the whole-data DM slicing the memories rely on, the disk cache, the learner's accuracy
bookkeeping (exact numbers with a constant model, and re-predicted trained models), and bad input."""
import dataclasses

import pytest
import torch
import torch.nn as nn

from distill_lib import continual
from distill_lib.cache import DiskCache
from distill_lib.continual import (BUILDERS, Builder, Scenario, build_memory, make_scenario, memory_union,
                                   run_continual)
from distill_lib.data import RealData
from distill_lib.distill import DistillConfig, Distiller
from distill_lib.evaluate import random_subset
from distill_lib.herding import embed_all, herding
from distill_lib.options import RunOptions
from distill_lib.runner import distill, save_checkpoint
from distill_lib.train import TrainSpec, predict

TINY_DM = DistillConfig(iterations=2, batch_real=8, net_width=8, featnet_recipe="default", featnet_arch="convnet",
                        featnet_epochs=1, featnet_per_class=20)
CPU = RunOptions(device="cpu")
BUILDER = {"random": Builder("random"), "herding": Builder("herding", feature_model="mlp"),
           "dm": Builder("dm", dm_config=TINY_DM, dm_options=CPU),
           "dm_cc_cm": Builder("dm_cc_cm", dm_config=TINY_DM, dm_options=CPU)}
FAST = TrainSpec(epochs=30, lr=0.05, batch_size=64)


# ---------------------------------------------------------------- scenarios

@pytest.mark.parametrize("num_classes, num_tasks, sizes", [(10, 5, [2] * 5), (10, 3, [4, 3, 3]), (7, 7, [1] * 7),
                                                            (10, 1, [10]), (10, 4, [3, 3, 2, 2])])
def test_scenario_partitions_the_classes(num_classes, num_tasks, sizes):
    scenario = make_scenario(num_classes, num_tasks, seed=3)
    assert [len(task) for task in scenario.tasks] == sizes
    assert sorted(c for task in scenario.tasks for c in task) == list(range(num_classes))
    for t in range(num_tasks):
        assert scenario.seen(t) == [c for task in scenario.tasks[:t + 1] for c in task]
    assert sorted(scenario.seen(num_tasks - 1)) == list(range(num_classes))


def test_scenario_is_seeded():
    assert make_scenario(10, 5, seed=0) == make_scenario(10, 5, seed=0)
    orders = {tuple(make_scenario(10, 5, seed=s).seen(4)) for s in range(4)}
    assert len(orders) == 4  # different seeds, different class orders


def test_scenario_is_immutable_and_hashable():
    tasks = [[2, 0], [1]]
    scenario = Scenario(3, tasks)
    tasks[0].append(1)  # the caller's list changing later does not reach the validated scenario
    assert scenario.tasks == ((2, 0), (1,))
    assert {make_scenario(10, 5, seed=1): "a"}[make_scenario(10, 5, seed=1)] == "a"


def test_scenario_bad_input():
    for num_tasks in (0, 11):
        with pytest.raises(ValueError, match="num_tasks"):
            make_scenario(10, num_tasks)
    with pytest.raises(ValueError, match="partition"):
        Scenario(3, [[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="partition"):
        Scenario(3, [[0, 1], []])
    with pytest.raises(ValueError, match="partition"):
        Scenario(4, [[0, 1], [2]])  # class 3 never arrives
    with pytest.raises(ValueError, match="integer class indices"):
        Scenario(2, [[0.0], [1.0]])
    with pytest.raises(ValueError, match="out of range"):
        make_scenario(4, 2).seen(2)


# ---------------------------------------------------------------- memories

def assert_real_images_of(memory, data):
    """Every memory image is one of the normalised training images of the class it is labelled with."""
    for image, label in zip(memory.images, memory.labels.tolist()):
        real = data.normalize(data.x_train[data.class_indices(label)])
        assert (real - image).abs().flatten(1).amax(1).min() < 1e-6


@pytest.mark.parametrize("name", BUILDERS)
def test_memory_budget_and_labels(digits, name):
    memory = build_memory(digits, [7, 3], BUILDER[name], ipc=3, seed=1)
    assert memory.images.shape == (6, 1, 16, 16)
    assert memory.labels.tolist() == [3, 3, 3, 7, 7, 7]
    assert memory.classes == digits.classes and memory.mean == digits.mean
    assert memory.config["builder"] == name and memory.config["classes"] == [3, 7]
    if name in ("random", "herding"):
        assert_real_images_of(memory, digits)
        assert len({tuple(image.flatten().tolist()) for image in memory.images}) == 6  # no image taken twice


def test_random_memory_is_the_random_subset_baseline(digits):
    memory = build_memory(digits, [3, 8], "random", ipc=2, seed=5)
    baseline = random_subset(digits, 2, seed=5)
    assert torch.equal(memory.images, baseline.images[torch.isin(baseline.labels, torch.tensor([3, 8]))])


def test_dm_memory_is_the_rows_of_the_whole_distillation(digits):
    memory = build_memory(digits, [2, 5], BUILDER["dm"], ipc=2, seed=0)
    whole = distill(BUILDER["dm"].distill_config("digits", 2, 0), digits, options=CPU, progress=False)
    keep = torch.isin(whole.labels, torch.tensor([2, 5]))
    assert torch.equal(memory.images, whole.images[keep])


def test_dm_rows_of_a_class_depend_only_on_that_class(digits):
    """Why slicing a whole-data run is a per-class-group distillation: change class 0's images, the rest stays."""
    changed = digits.x_train.clone()
    changed[digits.y_train == 0] = 255 - changed[digits.y_train == 0]
    other = RealData("digits", changed, digits.y_train, digits.x_test, digits.y_test, digits.classes, digits.mean,
                     digits.std)
    config = dataclasses.replace(TINY_DM, ipc=2, cm=True)
    a, b = distill(config, digits, options=CPU, progress=False), distill(config, other, options=CPU, progress=False)
    assert torch.equal(a.images[2:], b.images[2:])
    assert not torch.equal(a.images[:2], b.images[:2])


def test_herding_picks_the_known_points():
    features = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])  # mean 3.2
    # 3 is closest to 3.2; then (3 + 2) / 2 = 2.5 beats (3 + 10) / 2; then (5 + 1) / 3 = 2 beats 5/3 and 15/3
    assert herding(features, 3).tolist() == [3, 2, 1]


def test_herding_matches_a_plain_greedy_loop():
    features = torch.randn(40, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean, picked = features.mean(0), []
    for k in range(1, 13):
        best = min((i for i in range(len(features)) if i not in picked),
                   key=lambda i: torch.linalg.norm(mean - (sum(features[j] for j in picked) + features[i]) / k))
        picked.append(best)
    assert herding(features, 12).tolist() == picked
    with pytest.raises(ValueError):
        herding(features, 41)


class Projection(nn.Module):
    """A given feature net: a fixed random projection of the flattened image."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(256, 5)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(1))

    def embed(self, x):
        return self.proj(x.flatten(1))


def test_herding_builder_uses_the_given_net(digits):
    net = Projection()
    memory = build_memory(digits, [4, 1], Builder("herding", feature_net=net), ipc=4)
    assert net.training  # the caller's net is left in the mode it was given in
    for c in (1, 4):
        x = digits.normalize(digits.x_train[digits.class_indices(c)])
        with torch.no_grad():
            expected = x[herding(nn.functional.normalize(net.embed(x), dim=1), 4)]
        assert torch.equal(memory.images[memory.labels == c], expected)


def test_herding_embeds_a_convnet_as_a_plain_forward(digits):
    """The channels_last batches of the herding builder give the features of one plain NCHW forward."""
    net = continual.get_model("convnet", 1, 10, (16, 16))
    net.reset_parameters(torch.Generator().manual_seed(0))
    net.train()
    x = digits.normalize(digits.x_train[:70])
    with torch.no_grad():
        expected = net.eval().embed(x)
    net.train()
    assert torch.allclose(embed_all(net, x), expected, atol=1e-5)
    assert net.training and net.body[0].weight.is_contiguous()


def test_memory_union(digits):
    a, b = (build_memory(digits, classes, "random", ipc=2) for classes in ([0, 5], [3]))
    union = memory_union([a, b])
    assert union.labels.tolist() == [0, 0, 5, 5, 3, 3]
    assert torch.equal(union.images, torch.cat([a.images, b.images])) and union.classes == digits.classes
    with pytest.raises(ValueError, match="overlap"):
        memory_union([a, build_memory(digits, [5, 6], "random", ipc=2)])
    with pytest.raises(ValueError):
        memory_union([])


def test_partitioned_memories_flow_through_to_the_learner(digits, monkeypatch):
    """The IDM hook: a distilled set with partition factor 2 gives memories of factor 2 whose decoded view (4 images
    per stored one) is what the learner trains on."""
    real_distill = continual.distill
    monkeypatch.setattr(continual, "distill", lambda *a, **k: dataclasses.replace(real_distill(*a, **k), factor=2))
    memory = build_memory(digits, [2, 5], BUILDER["dm"], ipc=2)
    assert memory.factor == 2 and memory.images.shape == (4, 1, 16, 16)
    assert build_memory(digits, [2, 5], BUILDER["dm"], ipc=2).factor == 2  # from the cache
    trained_on = []
    monkeypatch.setattr(continual, "train_classifier", lambda net, x, y, *a, **k: trained_on.append(y) or [])
    scenario = Scenario(10, [[2, 5], [0, 1, 3, 4, 6, 7, 8, 9]])
    run_continual(digits, scenario, BUILDER["dm"], ipc=2, train_spec=FAST, device="cpu")
    assert sorted(trained_on[0].tolist()) == [2] * 8 + [5] * 8
    assert len(trained_on[1]) == 10 * 2 * 4


# ---------------------------------------------------------------- the cache

def counting(monkeypatch, name):
    calls = []
    original = getattr(continual, name)
    monkeypatch.setattr(continual, name, lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def test_cache_returns_identical_dm_memories_without_recomputing(digits, monkeypatch, _isolated_cache):
    calls = counting(monkeypatch, "distill")
    first = build_memory(digits, [0, 1], BUILDER["dm"], ipc=2)
    assert len(calls) == 1
    build_memory(digits, [2, 3], BUILDER["dm"], ipc=2)  # another group: rows of the cached whole-data run
    assert len(calls) == 1
    again = build_memory(digits, [1, 0], BUILDER["dm"], ipc=2)  # read back from disk
    assert len(calls) == 1 and torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    build_memory(digits, [0, 1], BUILDER["dm"], ipc=2, seed=1)  # another seed is another memory
    assert len(calls) == 2
    assert DiskCache("continual").dir == _isolated_cache / "continual"
    assert len(list(DiskCache("continual").dir.glob("*.pt"))) == 8  # 2 whole-data runs + 6 classes
    assert not list(DiskCache("continual").dir.glob("*.ckpt"))  # checkpoints of finished runs are removed


def test_cache_hit_for_herding(digits, monkeypatch):
    calls = counting(monkeypatch, "herding")
    first = build_memory(digits, [6, 8], BUILDER["herding"], ipc=3)
    again = build_memory(digits, [6, 8], BUILDER["herding"], ipc=3)
    assert len(calls) == 2 and torch.equal(first.images, again.images)  # one herding per class, once
    other = build_memory(digits, [2, 6], BUILDER["herding"], ipc=3)  # class 6 in another task: not herded again
    assert len(calls) == 3 and torch.equal(other.images[3:], first.images[:3])
    build_memory(digits, [6, 8], Builder("herding", feature_model="lenet"), ipc=3)
    assert len(calls) == 5


def test_interrupted_distillation_resumes_from_its_checkpoint(digits, monkeypatch):
    """A DM memory interrupted mid-run continues from the checkpoint beside the cache entry, to the same images."""
    builder = Builder("dm", dm_config=dataclasses.replace(TINY_DM, iterations=25), dm_options=CPU)
    expected = distill(builder.distill_config("digits", 2, 0), digits, options=CPU, progress=False).images
    steps = []
    original = continual.distill

    def interrupted(config, data, checkpoint, resume, progress, options):
        assert options == RunOptions(device="cpu", checkpoint_every=10)  # the builder's, saving every 10 iterations
        run = Distiller(config, data, options, progress)
        while run.iteration < 12:
            run.step()
        save_checkpoint(run, checkpoint)  # what distill() does on Ctrl-C at iteration 12 (last periodic save: 10)
        raise KeyboardInterrupt

    monkeypatch.setattr(continual, "distill", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_memory(digits, [1, 4], builder, ipc=2)
    assert len(list(DiskCache("continual").dir.glob("*.ckpt"))) == 1

    def resumed(config, data, checkpoint, resume, progress, options):
        steps.append(torch.load(checkpoint, weights_only=True)["iteration"])
        return original(config, data, checkpoint=checkpoint, resume=resume, progress=progress, options=options)

    monkeypatch.setattr(continual, "distill", resumed)
    memory = build_memory(digits, [1, 4], builder, ipc=2)
    assert steps == [12]  # continued, not restarted
    assert torch.equal(memory.images, expected.view(10, 2, 1, 16, 16)[[1, 4]].flatten(0, 1))
    assert not list(DiskCache("continual").dir.glob("*.ckpt"))


# ---------------------------------------------------------------- the learner

class Constant(nn.Module):
    """Predicts class ``c`` for every image."""

    def __init__(self, c, num_classes):
        super().__init__()
        self.c, self.num_classes = c, num_classes

    def reset_parameters(self, generator=None):
        pass

    def forward(self, x):
        return nn.functional.one_hot(torch.full((len(x),), self.c), self.num_classes).float()


def test_learner_bookkeeping_with_a_constant_model(digits, monkeypatch):
    scenario = make_scenario(10, 3, seed=2)
    c0 = scenario.tasks[0][0]
    trained_on = []
    monkeypatch.setattr(continual, "get_model", lambda *a, **k: Constant(c0, 10))
    monkeypatch.setattr(continual, "train_classifier", lambda net, x, y, *a, **k: trained_on.append(y) or [])
    result = run_continual(digits, scenario, "random", ipc=2, train_spec=FAST, device="cpu")
    expected = [(digits.y_test == c0).sum().item() / torch.isin(digits.y_test, torch.tensor(scenario.seen(t))).sum()
                .item() for t in range(3)]
    assert result.accuracies == pytest.approx(expected, abs=1e-6)
    assert result.seen == tuple(tuple(scenario.seen(t)) for t in range(3))
    for t, y in enumerate(trained_on):  # a fresh model per task, on the whole memory so far
        assert sorted(y.tolist()) == sorted(scenario.seen(t) * 2)
    assert result.final == result.accuracies[-1]
    assert result.average == pytest.approx(sum(expected) / 3)


def test_learner_trains_fresh_models_and_scores_seen_classes(digits, monkeypatch):
    nets = []
    original = continual.train_classifier
    monkeypatch.setattr(continual, "train_classifier", lambda net, *a, **k: nets.append(net) or original(net, *a, **k))
    scenario = make_scenario(10, 2, seed=0)
    result = run_continual(digits, scenario, "random", ipc=3, train_spec=FAST, seed=4, model="mlp", device="cpu")
    assert len(nets) == 2 and nets[0] is not nets[1]
    x_test, y_test = digits.test_tensors()
    for t, net in enumerate(nets):
        mask = torch.isin(y_test, torch.tensor(scenario.seen(t)))
        assert result.accuracies[t] == pytest.approx((predict(net, x_test[mask]) == y_test[mask]).float().mean().item())
    assert result.accuracies[0] > 0.5  # 5 classes from 15 images: well above chance
    assert run_continual(digits, scenario, "random", ipc=3, train_spec=FAST, seed=4, model="mlp",
                         device="cpu").accuracies == result.accuracies


def test_memory_seed_is_separate_from_the_learner_seed(digits, monkeypatch):
    runs = []
    original = continual.train_classifier
    monkeypatch.setattr(continual, "train_classifier",
                        lambda net, x, y, *a, **k: runs.append((x.clone(), y.clone())) or original(net, x, y, *a, **k))
    scenario = make_scenario(10, 2, seed=1)
    shared = [run_continual(digits, scenario, "random", ipc=2, train_spec=FAST, seed=s, memory_seed=0, model="mlp",
                            device="cpu") for s in (0, 1)]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(runs[:2], runs[2:4]))  # the same memories ...
    assert shared[0].accuracies != shared[1].accuracies  # ... another learner
    assert shared[1].config["seed"] == 1 and shared[1].config["memory_seed"] == 0
    default = run_continual(digits, scenario, "random", ipc=2, train_spec=FAST, seed=1, model="mlp", device="cpu")
    assert default.config["memory_seed"] == 1 and not torch.equal(runs[4][0], runs[0][0])  # memory_seed = seed


def test_results_cached_under_their_full_config(digits, monkeypatch):
    calls = counting(monkeypatch, "train_classifier")
    cache = DiskCache("continual_runs")
    scenario = make_scenario(10, 2, seed=0)
    kwargs = dict(ipc=2, train_spec=FAST, seed=3, model="mlp", device="cpu", cache=cache)
    first = run_continual(digits, scenario, "random", **kwargs)
    assert len(calls) == 2
    again = run_continual(digits, scenario, "random", **kwargs)
    assert len(calls) == 2 and again == first  # read back, nothing trained
    assert cache.get(first.config) == {"accuracies": list(first.accuracies)}
    for change in ({"train_spec": dataclasses.replace(FAST, epochs=31)}, {"seed": 4}, {"memory_seed": 0},
                   {"model": "lenet"}):
        run_continual(digits, scenario, "random", **{**kwargs, **change})
    run_continual(digits, make_scenario(10, 2, seed=1), "random", **kwargs)  # another class order
    run_continual(digits, scenario, "herding", **kwargs)
    assert len(calls) == 2 + 6 * 2
    assert len(list(cache.dir.glob("*.pt"))) == 7


# ---------------------------------------------------------------- bad input

def test_bad_input(digits):
    for ipc in (0, 1000):
        with pytest.raises(ValueError, match="ipc must be in 1.."):
            build_memory(digits, [0, 1], "random", ipc=ipc)
    with pytest.raises(ValueError, match="random, herding, dm, dm_cc_cm"):
        build_memory(digits, [0], "gdumb", ipc=2)
    with pytest.raises(ValueError, match="random, herding, dm, dm_cc_cm"):
        run_continual(digits, make_scenario(10, 2), "icarl", ipc=2, train_spec=FAST)
    with pytest.raises(ValueError, match="distinct"):
        build_memory(digits, [1, 1], "random", ipc=2)
    with pytest.raises(ValueError, match="classes"):
        run_continual(digits, make_scenario(5, 2), "random", ipc=2, train_spec=FAST)
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        run_continual(digits, make_scenario(10, 2), "random", ipc=2, train_spec=FAST, model="resnet")
    with pytest.raises(ValueError, match="unknown feature model"):
        Builder("herding", feature_model="vit")
    with pytest.raises(ValueError, match="cannot herd 0"):
        herding(torch.zeros(3, 2), 0)
