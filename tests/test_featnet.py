"""Tests for distill_lib.featnet's recipes: what each trains on and how (traced through the one training loop), the
cache key of the original spec, the recorded accuracy, the pool's output, and a pool pretrained by
benchmarks/featnets.py on 2 torchrun processes against the same pool trained here in one."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from distill_lib import augment, cli, featnet, sweep, train
from distill_lib.cache import DiskCache
from distill_lib.distill import DistillConfig
from distill_lib.evaluate import EvalProtocol
from distill_lib.featnet import RECIPES, FeatNetPool, FeatNetSpec, cache_key, pretrain, pretrained, recipe
from distill_lib.models import get_model
from test_distributed import REPO, job_env, torchrun

SMALL_PAPER = recipe("paper", arch="convnet", epochs=2)  # the paper's procedure on a net that trains in seconds


def trace(monkeypatch, data, spec: FeatNetSpec) -> dict:
    """Pretrain ``spec`` on ``data`` and record what the training saw: every training-mode input of the net, the
    optimiser's lr / momentum / weight decay at every step, and the augmentation family of every batch."""
    seen = {"inputs": [], "lr": [], "momentum": [], "weight_decay": [], "families": []}
    real_build, real_choose = featnet._build, augment.choose_family

    def build(data, spec):
        net = real_build(data, spec)
        net.register_forward_pre_hook(lambda m, args: seen["inputs"].append(args[0].clone()) if m.training else None)
        return net

    def choose_family(strategy, generator):
        seen["families"].append(real_choose(strategy, generator))
        return seen["families"][-1]

    def before_step(optimizer, args, kwargs):
        for name in ("lr", "momentum", "weight_decay"):
            seen[name].append(optimizer.param_groups[0][name])

    monkeypatch.setattr(featnet, "_build", build)
    monkeypatch.setattr(augment, "choose_family", choose_family)
    hook = register_optimizer_step_pre_hook(before_step)
    try:
        pretrain(data, spec)
    finally:
        hook.remove()
    return seen


def rows(images: list[torch.Tensor]) -> list[bytes]:
    return sorted(row.numpy().tobytes() for batch in images for row in batch)


def test_paper_recipe_trains_on_the_full_set_at_a_constant_lr_without_augmentation(monkeypatch, digits):
    seen = trace(monkeypatch, digits, SMALL_PAPER)
    x, _ = digits.train_tensors()
    per_epoch = -(-len(x) // 256)  # batches of 256
    assert len(seen["lr"]) == len(seen["inputs"]) == 2 * per_epoch
    assert set(seen["lr"]) == {0.01} and set(seen["momentum"]) == {0.9} and set(seen["weight_decay"]) == {5e-4}
    assert set(seen["families"]) == {"none"}
    for epoch in range(2):  # each epoch: every training image exactly once, as stored (no pixel changed)
        batches = seen["inputs"][epoch * per_epoch:(epoch + 1) * per_epoch]
        assert [len(b) for b in batches[:-1]] == [256] * (per_epoch - 1)
        assert rows(batches) == rows([x])


def test_default_recipe_still_augments_decays_and_uses_batches_of_128(monkeypatch, digits):
    """The tracer sees a schedule and augmentation when there are some (so the paper test above can fail)."""
    seen = trace(monkeypatch, digits, replace(RECIPES["default"], arch="convnet", per_class=30))
    assert seen["lr"] == [0.01] * 3 + [pytest.approx(0.001)] * 3  # 300 images: 3 batches of 128 per epoch
    assert "none" not in seen["families"] and len(seen["families"]) == 6
    assert rows(seen["inputs"][:3]) != rows([digits.subset(30, seed=0).train_tensors()[0]])  # pixels augmented


def test_paper_recipe_is_the_authors_resnet18():
    spec = RECIPES["paper"]
    assert (spec.arch, spec.epochs, spec.per_class, spec.batch_size, spec.lr) == ("resnet18", 40, None, 256, 0.01)
    net = get_model(spec.arch, 3, 10, (32, 32))
    stem = net.body.conv1
    assert (stem.kernel_size, stem.stride, stem.padding) == ((3, 3), (1, 1), (1, 1))
    assert isinstance(net.body.maxpool, nn.Identity)
    norms = [m for m in net.modules() if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d))]
    assert norms and all(isinstance(m, nn.GroupNorm) and m.num_groups == m.num_channels for m in norms)  # instance
    assert net.feature_shape == (512, 4, 4)


def test_the_original_spec_keeps_its_cache_key(digits):
    """Nets cached before the recipes existed are found again: the key of the original spec is the old dict (in a
    distillation: the 'default' recipe at 2 epochs, the library's CC default until it moved to 'convnet')."""
    old = {"data": "digits", "source": digits.source, "n_train": len(digits.x_train), "arch": "resnet18",
           "epochs": 2, "per_class": None, "batch_size": 128, "lr": 0.01, "seed": 0}
    assert cache_key(digits, FeatNetSpec()) == cache_key(digits, recipe("default")) == old
    original = DistillConfig(cc=True, featnet_recipe="default", featnet_epochs=2)
    assert cache_key(digits, original.featnet_spec()) == old
    paper = cache_key(digits, recipe("paper"))
    assert (paper["schedule"], paper["dsa_strategy"], paper["epochs"]) == ("constant", "none", 40)
    assert "featnet_recipe" not in original.identity()
    assert DistillConfig(cc=True).identity()["featnet_recipe"] == "convnet"
    assert DistillConfig(cc=True, featnet_recipe="paper").identity()["featnet_recipe"] == "paper"


def test_distill_config_reads_the_recipe_and_refuses_mixed_settings():
    config = DistillConfig(cc=True, featnet_recipe="paper", featnet_epochs=3, seed=5)
    assert config.featnet_spec() == recipe("paper", epochs=3, seed=5)
    with pytest.raises(ValueError, match="featnet_recipe must be one of"):
        DistillConfig(featnet_recipe="fast")
    with pytest.raises(ValueError, match="fixes its net and training set; leave featnet_arch at the default"):
        DistillConfig(featnet_recipe="convnet", featnet_arch="vgg11")
    args = cli.parser().parse_args(["distill", "--featnet-recipe", "convnet"])
    assert args.featnet_recipe == "convnet"
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["distill", "--featnet-recipe", "fast"])
    with pytest.raises(ValueError, match="feature-net schedule"):
        FeatNetSpec(schedule="cosine")


def test_sweeps_pretrain_every_member_of_a_recipe_pool():
    config = DistillConfig(cc=True, featnet_recipe="paper", featnet_epochs=1, featnet_pool=3, iterations=2)
    needed = sweep.featnets_needed([sweep.Cell(config, EvalProtocol(epochs=1, num_models=1))])
    assert [spec for _, spec in needed] == [recipe("paper", epochs=1, seed=s) for s in range(3)]


def test_recorded_accuracy_is_the_nets_test_accuracy_and_the_pool_prints_it(digits, capsys):
    pool = FeatNetPool(digits, SMALL_PAPER, 1, progress=True)
    net, recorded = pool.nets[0], pool.accuracies[0]
    assert recorded == train.accuracy(net, *digits.test_tensors())
    assert recorded > 0.5  # a trained net, far above chance (0.1)
    entry = pretrained(digits, SMALL_PAPER)
    assert entry["accuracy"] == recorded and entry["seconds"] > 0
    assert entry["machine"] == train.machine(torch.device("cpu"))  # where its seconds were spent (a GPU's name there)
    err = capsys.readouterr().err
    assert f"feature net 1/1 (convnet, seed 0): test accuracy {recorded:.2%}" in err
    FeatNetPool(digits, SMALL_PAPER, 1, progress=True)  # loaded from the cache: printed again
    assert f"test accuracy {recorded:.2%}" in capsys.readouterr().err


def test_a_pool_pretrained_on_two_processes_equals_the_pool_trained_in_one(digits, tmp_path):
    """Two recipes' pools in one command, their nets dealt over 2 processes: each net equals the one trained here
    in one process, and the table names each net's recipe, epochs, seed, accuracy, seconds per epoch and machine."""
    specs = {"paper": recipe("paper", arch="mlp", epochs=1), "convnet": recipe("convnet", arch="mlp", epochs=2)}
    flags = ["--dataset", "digits", "--recipe", "paper:1", "convnet:2", "--arch", "mlp", "--pool", "3",
             "--results-dir", tmp_path / "results", "--results-tag", "mlp"]
    job = torchrun([REPO / "benchmarks" / "featnets.py", *flags], job_env(tmp_path / "cache", tmp_path), tmp_path)
    assert job.returncode == 0, job.stderr[-2000:]
    theirs = DiskCache("featnet", tmp_path / "cache")
    want = []
    for name, spec in specs.items():
        here = FeatNetPool(digits, spec, 3)  # in this process, into this test's own cache
        for member, net, acc in zip(FeatNetPool.specs(spec, 3), here.nets, here.accuracies):
            entry = theirs.get(cache_key(digits, member))
            assert entry is not None, f"{name} seed {member.seed} was not cached by the job"
            assert entry["accuracy"] == acc
            for key, value in net.state_dict().items():
                assert torch.equal(entry["state_dict"][key], value), (name, member.seed, key)
            want.append([name, str(spec.epochs), "full", str(member.seed), f"{100 * acc:.2f} %",
                         f"{entry['seconds']:.0f}", f"{entry['seconds'] / spec.epochs:.0f}", entry["machine"]])
    record = json.loads((tmp_path / "results" / "featnets.mlp.json").read_text())  # kept beside the others
    assert record["tables"][0]["rows"] == want
    assert record["protocol"].startswith("Feature nets on digits, 3 seed(s) from 0 per recipe, 2 process(es)")
    assert "; 'convnet': mlp, 2 epochs" in record["protocol"] and "- '" not in record["protocol"]
