"""The speed benchmark (benchmarks/speed.py) times what it says: its reference row is one step of
distill_lib.reference's per-class loop (checked against the library in test_distill and test_idm) on its own copy of
the pixels, equal to the library's step; plus the FLOP counts of the floor, the timing Distiller's random feature net
and a smoke run of the script.
"""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import speed  # noqa: E402

from distill_lib import reference  # noqa: E402
from distill_lib.distill import DistillConfig, Distiller  # noqa: E402
from distill_lib.models import get_model  # noqa: E402
from distill_lib.options import RunOptions  # noqa: E402

TINY = dict(dataset="digits", ipc=3, batch_real=16, net_width=16, featnet_recipe="default", featnet_arch="convnet",
            featnet_epochs=1, featnet_per_class=20)
CPU = RunOptions(device="cpu")


def test_reference_step_updates_its_own_images(digits):
    run = Distiller(DistillConfig(**TINY, cm=True), digits, options=CPU, progress=False)
    before = run.images.detach().clone()
    images = before.clone().requires_grad_(True)
    opt = torch.optim.SGD([images], lr=1.0, momentum=0.5)
    speed.reference_step(run, 0, images, opt)
    assert torch.equal(run.images.detach(), before)  # the library's pixels are untouched
    assert not torch.equal(images.detach(), before)
    # the same update as the library's step (the first SGD step moves the pixels by -lr * gradient): normwise, as
    # reference.GRADIENT_TOLERANCE explains
    run.step()
    error = reference.gradient_error(images.detach() - before, run.images.detach() - before)
    assert error <= reference.GRADIENT_TOLERANCE, f"the reference step moved the pixels {error:.2e} differently"


def test_flop_counts_of_the_floor():
    convnet = get_model("convnet", 3, 10, (32, 32))
    # conv1 3->128 at 32x32, conv2 128->128 at 16x16, conv3 at 8x8 (3x3 kernels)
    assert speed.macs_per_image(convnet, 3, (32, 32)) == 9 * 128 * (3 * 32 * 32 + 128 * 16 * 16 + 128 * 8 * 8)
    assert speed.macs_per_image(convnet, 3, (32, 32), part="forward") == (
        speed.macs_per_image(convnet, 3, (32, 32)) + 128 * 4 * 4 * 10)
    data = speed.random_data("cifar10", 2, 10)
    flops = speed.distill_flops(DistillConfig(dataset="cifar10", ipc=10, cc=True), data, 256, "resnet18")
    assert flops["real forward"] == pytest.approx(260e9, rel=0.01)  # CIFAR-10 DM, batch 256: ~260 GFLOP per iteration
    resnet_macs = flops["featnet forward+input-grad"] / (2 * 2 * 100)
    assert resnet_macs == pytest.approx(0.556e9, rel=0.01)  # ResNet18, CIFAR stem, 32x32


def test_timing_distiller_uses_a_random_featnet_without_pretraining(digits, _isolated_cache):
    cfg = DistillConfig(**{**TINY, "featnet_arch": "resnet18"}, cc=True, cm=True)
    run = speed.timing_distiller(cfg, digits, CPU)
    assert run.config.cc and len(run.featnets.nets) == 1 and not run.featnets.nets[0].training
    assert not (_isolated_cache / "featnet").exists()  # nothing was pretrained or cached
    torch.testing.assert_close(reference.loss_terms(run, 0)["cc"], run.loss_terms(0)["cc"], rtol=1e-5, atol=0)


def test_script_runs_on_tiny_shapes(capsys, monkeypatch):
    monkeypatch.delenv("DISTILL_DATA", raising=False)  # setup() may set it; restored after the test
    speed.main(["--datasets", "digits", "--ipcs", "2", "--reps", "1", "--net-width", "8", "--batch-real", "8",
                "--test-images", "100", "--cc-featnet-arch", "convnet", "--train-per-class", "10",
                "--eval-epochs", "10"])
    out = capsys.readouterr().out
    assert "MALLOC_MMAP_THRESHOLD_" in out and "GFLOP/s" in out
    assert "| DM | 2 |" in out and "| DM+CC+CM | 2 |" in out
    rows = [line for line in out.splitlines() if line.startswith("| 2 |")]
    assert len(rows) == 1 and len(rows[0].split("|")) == 16  # the evaluation row: 14 columns
    assert rows[0].startswith("| 2 | no |")  # 10 epochs x 20 images x 3 models: below the "auto" compile threshold
