"""The speed benchmark's reference loop computes what the library computes.

benchmarks/speed.py times ``Distiller.step`` against a per-class loop written the way the authors' code works
(``reference_loss_terms``). A speed ratio means something only if both compute the same iteration: same seeded net,
real batches, augmentation and feature-net draw. Checked here on the tiny digits set in float32, plus the FLOP counts
of the floor and a smoke run of the script.
"""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import speed  # noqa: E402

from distill_lib import losses, seeding  # noqa: E402
from distill_lib.distill import DistillConfig, Distiller  # noqa: E402
from distill_lib.models import get_model  # noqa: E402

TINY = dict(dataset="digits", ipc=3, batch_real=16, net_width=16, device="cpu",
            featnet_arch="convnet", featnet_epochs=1, featnet_per_class=20)


@pytest.mark.parametrize("extra", [dict(), dict(cm=True), dict(cc=True, cm=True, featnet_pool=2)],
                         ids=["dm", "dm+cm", "dm+cc+cm"])
def test_reference_loss_terms_equal_library(digits, extra):
    run = Distiller(DistillConfig(**TINY, **extra), digits, progress=False)
    weights = run.config.loss_weights()
    iterations = (0, 1, 6)  # with a pool of two, FEATNET_DRAW picks net 0 at iterations 0 and 1 and net 1 at 6
    if run.config.cc:
        picks = {int(torch.randint(2, (1,), generator=seeding.generator(0, seeding.FEATNET_DRAW, it)))
                 for it in iterations}
        assert picks == {0, 1}
    for it in iterations:
        got, want = run.loss_terms(it), speed.reference_loss_terms(run, it)
        assert list(got) == list(want)
        for name in got:
            assert want[name].dtype == torch.float32
            assert want[name].item() > 0, name
            torch.testing.assert_close(want[name], got[name], rtol=1e-5, atol=0, msg=f"{name} at iteration {it}")
        g_lib = torch.autograd.grad(losses.combine(got, weights), run.images)[0]
        g_ref = torch.autograd.grad(sum(weights[k] * v for k, v in want.items()), run.images)[0]
        torch.testing.assert_close(g_ref, g_lib, rtol=1e-4, atol=1e-6 * g_lib.abs().max().item())
        run.step()  # move the pixels: the next iteration compares other images too


def test_reference_follows_the_iteration(digits):
    """Not vacuous: another iteration's streams give other numbers."""
    run = Distiller(DistillConfig(**TINY, cm=True), digits, progress=False)
    a, b = speed.reference_loss_terms(run, 0), speed.reference_loss_terms(run, 1)
    assert not torch.isclose(a["dm"], b["dm"], rtol=1e-3)
    assert not torch.isclose(a["cm"], b["cm"], rtol=1e-3)


def test_reference_step_updates_its_own_images(digits):
    run = Distiller(DistillConfig(**TINY, cm=True), digits, progress=False)
    before = run.images.detach().clone()
    images = before.clone().requires_grad_(True)
    opt = torch.optim.SGD([images], lr=1.0, momentum=0.5)
    speed.reference_step(run, 0, images, opt)
    assert torch.equal(run.images.detach(), before)  # the library's pixels are untouched
    assert not torch.equal(images.detach(), before)
    # the same update as the library's step
    run.step()
    torch.testing.assert_close(images.detach(), run.images.detach(), rtol=1e-4, atol=1e-5)


def test_loop_covariance_is_the_local_covariance():
    fmap = torch.randn(5, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(speed.loop_covariance(fmap), losses.local_covariance(fmap), rtol=1e-5, atol=1e-6)


def test_flop_counts_of_the_floor():
    convnet = get_model("convnet", 3, 10, (32, 32))
    # conv1 3->128 at 32x32, conv2 128->128 at 16x16, conv3 at 8x8 (3x3 kernels)
    assert speed.macs_per_image(convnet, 3, (32, 32)) == 9 * 128 * (3 * 32 * 32 + 128 * 16 * 16 + 128 * 8 * 8)
    assert speed.macs_per_image(convnet, 3, (32, 32), part="forward") == (
        speed.macs_per_image(convnet, 3, (32, 32)) + 128 * 4 * 4 * 10)
    data = speed.random_data("cifar10", 2, 10)
    flops = speed.distill_flops(DistillConfig(dataset="cifar10", ipc=10, cc=True), data, 256, "resnet18")
    assert flops["real forward"] == pytest.approx(260e9, rel=0.01)  # PAPER.md: ~260 GFLOP per iteration
    resnet_macs = flops["featnet forward+input-grad"] / (2 * 2 * 100)
    assert resnet_macs == pytest.approx(0.556e9, rel=0.01)  # ResNet18, CIFAR stem, 32x32


def test_timing_distiller_uses_a_random_featnet_without_pretraining(digits, _isolated_cache):
    cfg = DistillConfig(**{**TINY, "featnet_arch": "resnet18"}, cc=True, cm=True)
    run = speed.timing_distiller(cfg, digits)
    assert run.config.cc and len(run.featnets.nets) == 1 and not run.featnets.nets[0].training
    assert not (_isolated_cache / "featnet").exists()  # nothing was pretrained or cached
    torch.testing.assert_close(speed.reference_loss_terms(run, 0)["cc"], run.loss_terms(0)["cc"], rtol=1e-5, atol=0)


def test_script_runs_on_tiny_shapes(capsys, monkeypatch):
    monkeypatch.delenv("DISTILL_DATA", raising=False)  # setup() may set it; restored after the test
    speed.main(["--datasets", "digits", "--ipcs", "2", "--reps", "1", "--net-width", "8", "--batch-real", "8",
                "--test-images", "100", "--cc-featnet-arch", "convnet", "--train-per-class", "10", "--eval-epochs", "10"])
    out = capsys.readouterr().out
    assert "MALLOC_MMAP_THRESHOLD_" in out and "GFLOP/s" in out
    assert "| DM | 2 |" in out and "| DM+CC+CM | 2 |" in out
    rows = [line for line in out.splitlines() if line.startswith("| 2 |")]
    assert len(rows) == 1 and len(rows[0].split("|")) == 16  # the evaluation row: 14 columns
    assert rows[0].startswith("| 2 | no |")  # 10 epochs x 20 images x 3 models: below the "auto" compile threshold
