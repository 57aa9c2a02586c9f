"""Seconds per distillation iteration and per evaluation epoch: the library, a per-class reference loop, a FLOP floor.

    python benchmarks/speed.py                                  # CIFAR-10 shapes, DM and DM+CC+CM, IPC 1/10/50
    python benchmarks/speed.py --reps 3 --threads 2
    DISTILL_MALLOC_TUNING=0 python benchmarks/speed.py --reps 3 --threads 2   # everything on glibc's defaults

What is timed (CPU, float32; random uint8 images of the data set's shape, so no data set is needed):

* one distillation iteration (loss, backward, SGD step on the pixels) of the library's ``Distiller.step`` next to
  :func:`reference_step`, the straightforward per-class loop of ``distill_lib.reference`` (the shape of the authors'
  code: per-class NCHW forwards, the embedding net and CC's feature net copied afresh every iteration). Both run in
  the same process, interleaved iteration by iteration, after one untimed warm-up iteration each. ConvNet width
  128, depth 3, instance norm, batch_real 256, full DSA. For CC the feature net is a *randomly initialised*
  ResNet18 (``--cc-featnet-arch``) in eval mode: its cost does not depend on its weights, so it is not trained for
  timing.
* the FLOP floor of an iteration: conv/linear multiply-adds of the ConvNet on the real batch (forward), on the
  synthetic batch (forward + input-gradient backward, ~1x the forward: no weight gradients, neither net is trained),
  for CC the feature net's forward + input-gradient backward on the synthetic images, for CM the covariance
  products; 2 FLOP per MAC; divided by the best of several 2048x2048 float32 ``torch.mm`` (the machine's peak here).
* evaluation: seconds per training epoch on the IPC x classes synthetic images (library ``train_classifier``, one
  epoch per call, vs a plain NCHW SGD loop with per-batch DSA, batch 256) and per test pass over ``--test-images``
  images (library ``accuracy`` vs batches of 256 in NCHW), with the per-model total extrapolated to
  ``--eval-epochs`` epochs (default 1000, the papers' protocol) and its floor (forward + both backwards ~3x).

Tables report the median over ``--reps`` with (min-max). Library and reference share one process, so they share its
glibc allocator settings: ``import distill_lib`` raises the thresholds (distill_lib.allocator) unless
``DISTILL_MALLOC_TUNING=0`` (or the user's own MALLOC_*_ variables); the header prints which. Run it both ways: the
library as users get it is the tuned run, the authors' code as users get it the untuned one. The library's compile
(``RunOptions.compile`` / ``EvalProtocol.compile`` "auto") is on for these sizes; its cold compile falls in the
untimed warm-up, reported in its own column.
The common flags --iterations, --models and --seeds are not used here.
"""
from __future__ import annotations

import math
import os
import statistics
import time
import warnings
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import parser, setup, write_results
from distill_lib import allocator, augment, losses, reference, seeding
from distill_lib.data import DATASETS, RealData, from_arrays
from distill_lib.distill import DistillConfig, Distiller
from distill_lib.evaluate import EvalProtocol
from distill_lib.featnet import FeatNetPool
from distill_lib.models import get_model
from distill_lib.options import RunOptions
from distill_lib.train import TrainSpec, accuracy, train_classifier

METHODS = {"dm": dict(), "dm+cm": dict(cm=True), "dm+cc": dict(cc=True), "dm+cc+cm": dict(cc=True, cm=True)}
LABELS = {"dm": "DM", "dm+cm": "DM+CM", "dm+cc": "DM+CC", "dm+cc+cm": "DM+CC+CM"}
MALLOC_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


# ------------------------------------------------------------------------------------------------------------
# The reference: distill_lib.reference's per-class loop, on its own copy of the pixels with its own SGD.

def reference_step(distiller: Distiller, iteration: int, images: torch.Tensor,
                   optimizer: torch.optim.Optimizer) -> float:
    """One iteration of distill_lib.reference's per-class loop on ``images`` (a leaf of its own): loss, backward, SGD
    step; returns the loss."""
    total = losses.combine(reference.loss_terms(distiller, iteration, images), distiller.config.loss_weights())
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    return total.item()


# ------------------------------------------------------------------------------------------------------------
# FLOP floor

def macs_per_image(model: nn.Module, channels: int, image_size: tuple[int, int], part: str = "embed") -> int:
    """Multiply-adds of the Conv2d / Linear layers that ``model.<part>`` runs on one image (counted by hooks)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
        else:
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            getattr(model, part)(torch.zeros(1, channels, *image_size))
    finally:
        for h in handles:
            h.remove()
    return total


def distill_flops(config: DistillConfig, data: RealData, n_real: int, featnet_arch: str) -> dict[str, float]:
    """FLOP of one iteration's unavoidable products, by part (2 FLOP per MAC)."""
    net = get_model("convnet", data.channels, data.num_classes, data.image_size, width=config.net_width,
                    depth=config.net_depth, activation=config.net_act, norm=config.net_norm,
                    pooling=config.net_pooling)
    conv = macs_per_image(net, data.channels, data.image_size)
    n_syn = data.num_classes * config.ipc
    flops = {"real forward": 2.0 * conv * data.num_classes * n_real,
             "synthetic forward+input-grad": 2.0 * 2 * conv * n_syn}
    if config.cm:
        d, h, w = net.feature_shape
        flops["covariances"] = 2.0 * d * d * h * w * (data.num_classes * n_real + 2 * n_syn)
    if config.cc:
        featnet = get_model(featnet_arch, data.channels, data.num_classes, data.image_size)
        flops["featnet forward+input-grad"] = 2.0 * 2 * macs_per_image(featnet, data.channels, data.image_size) * n_syn
    return flops


def matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    """Best float32 FLOP/s of ``torch.mm`` on (size x size) matrices, after one warm-up product."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=g), torch.randn(size, size, generator=g)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best


# ------------------------------------------------------------------------------------------------------------
# Set-up

def random_data(name: str, per_class: int, test_images: int, seed: int = 0) -> RealData:
    """Random uint8 images of data set ``name``'s shape: ``per_class`` training images per class, ``test_images``."""
    spec = DATASETS[name]
    g = torch.Generator().manual_seed(seed)
    shape = (spec.channels, *spec.image_size)
    x_train = torch.randint(0, 256, (spec.num_classes * per_class, *shape), dtype=torch.uint8, generator=g)
    x_test = torch.randint(0, 256, (test_images, *shape), dtype=torch.uint8, generator=g)
    y_train = torch.arange(spec.num_classes).repeat_interleave(per_class)
    y_test = torch.arange(test_images) % spec.num_classes
    return from_arrays(name, x_train, y_train, x_test, y_test, [str(c) for c in range(spec.num_classes)],
                       source=f"random uint8 images of {name}'s shape")


def random_featnet_pool(data: RealData, arch: str, seed: int = 0) -> FeatNetPool:
    """A pool of one *untrained* feature net (seeded random init, eval mode): for timing only."""
    net = get_model(arch, data.channels, data.num_classes, data.image_size)
    net.reset_parameters(seeding.generator(seed, seeding.FEATNET, 0))
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    pool = FeatNetPool.__new__(FeatNetPool)  # skip pretraining: the cost of CC does not depend on the weights
    pool.nets, pool.accuracies = [net], [float("nan")]
    return pool


def timing_distiller(config: DistillConfig, data: RealData, options: RunOptions) -> Distiller:
    """A Distiller for ``config`` whose CC feature net (if any) is a random one instead of a pretrained one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the IPC-1 warning about CC/CM: true, and irrelevant to timing
        run = Distiller(replace(config, cc=False), data, options, progress=False)
    if config.cc:
        run.config = config
        run.featnets = random_featnet_pool(data, config.featnet_arch, config.seed)
    return run


def summary(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:.3f}" if len(values) == 1 else f"{med:.3f} ({min(values):.3f}-{max(values):.3f})"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------------------------
# Measurements

def time_distill(config: DistillConfig, data: RealData, reps: int) -> tuple[list[float], list[float], float, bool]:
    """Seconds per iteration of the library and the reference, interleaved (order alternating), after a warm-up;
    also the library's warm-up seconds (its cold compile, if any) and whether it compiled."""
    run = timing_distiller(config, data, RunOptions(device="cpu"))
    images = run.images.detach().clone().requires_grad_(True)
    optimizer = torch.optim.SGD([images], lr=config.resolved().lr_img, momentum=config.momentum)
    lib, ref, warm_up = [], [], 0.0
    for rep in range(reps + 1):  # rep 0: warm-up of both
        it = run.iteration
        t_lib = lambda: run.step()  # noqa: E731
        t_ref = lambda: reference_step(run, it, images, optimizer)  # noqa: E731
        if rep % 2 == 0:
            a, b = timed(t_lib), timed(t_ref)
        else:
            b, a = timed(t_ref), timed(t_lib)
        if rep:
            lib.append(a)
            ref.append(b)
        else:
            warm_up = a
    return lib, ref, warm_up, run.compiled


def reference_epoch(model: nn.Module, optimizer, x, y, batch_size: int, strategy: str, generator) -> None:
    """The plain evaluation loop: shuffled batches of ``batch_size``, DSA per batch, SGD."""
    model.train()
    order = torch.randperm(len(x), generator=generator)
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        loss = F.cross_entropy(model(augment.augment(x[idx], strategy, generator)), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@torch.no_grad()
def reference_test(model: nn.Module, x, y, batch_size: int = 256) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        correct += (model(x[start:start + batch_size]).argmax(1) == y[start:start + batch_size]).sum().item()
    return correct / len(x)


def time_eval(data: RealData, ipc: int, width: int, reps: int, protocol: EvalProtocol,
              epoch_images: int = 1000) -> dict:
    """Seconds per training epoch (blocks of ~epoch_images images) and per test pass, library vs reference.

    The library runs as ``evaluate`` would under ``protocol`` (compiled when its "auto" rule says so); the one-off
    warm-up of the library (cold compile included) is reported separately.
    """
    nc = data.num_classes
    x = torch.cat([data.sample_real(c, ipc, seeding.generator(0, seeding.RANDOM_SUBSET, c)) for c in range(nc)])
    y = torch.arange(nc).repeat_interleave(ipc)
    x_test, y_test = data.test_tensors()
    compile = protocol.use_compile(torch.device("cpu"), len(x))
    spec = TrainSpec(epochs=1, compile=compile)
    epochs = max(1, round(epoch_images / len(x)))

    def model():
        net = get_model("convnet", data.channels, nc, data.image_size, width=width)
        net.reset_parameters(seeding.generator(0, seeding.EVAL_MODEL, ipc, 0))
        return net

    lib_net, ref_net = model(), model()
    g_lib, g_ref = seeding.generator(0, seeding.EVAL_MODEL, ipc, 1), seeding.generator(0, seeding.EVAL_MODEL, ipc, 2)
    ref_opt = spec.optimizer(ref_net)

    def lib_epochs(k):
        for _ in range(k):
            train_classifier(lib_net, x, y, spec, g_lib)

    def ref_epochs(k):
        for _ in range(k):
            reference_epoch(ref_net, ref_opt, x, y, spec.batch_size, spec.dsa_strategy, g_ref)

    warm_up = timed(lambda: (lib_epochs(1), accuracy(lib_net, x_test[:512], y_test[:512], compile=compile)))
    ref_epochs(1)
    reference_test(ref_net, x_test[:512], y_test[:512])
    out = {"lib_epoch": [], "ref_epoch": [], "lib_test": [], "ref_test": [], "epochs_per_block": epochs,
           "compile": compile, "warm_up": warm_up}
    for rep in range(reps):
        pairs = [("lib_epoch", lambda: lib_epochs(epochs)), ("ref_epoch", lambda: ref_epochs(epochs))]
        pairs += [("lib_test", lambda: accuracy(lib_net, x_test, y_test, compile=compile)),
                  ("ref_test", lambda: reference_test(ref_net, x_test, y_test))]
        if rep % 2:
            pairs = [pairs[1], pairs[0], pairs[3], pairs[2]]
        for key, fn in pairs:
            seconds = timed(fn)
            out[key].append(seconds / epochs if key.endswith("epoch") else seconds)
    return out


def eval_flops(data: RealData, ipc: int, width: int, test_images: int) -> tuple[float, float]:
    """FLOP of one training epoch (forward + input and weight gradients, ~3x) and of one test pass (forward)."""
    net = get_model("convnet", data.channels, data.num_classes, data.image_size, width=width)
    fwd = macs_per_image(net, data.channels, data.image_size, part="forward")
    return 2.0 * 3 * fwd * data.num_classes * ipc, 2.0 * fwd * test_images


# ------------------------------------------------------------------------------------------------------------

def malloc_line() -> str:
    """The glibc allocator settings of this process: what ``import distill_lib`` did, and the start-up variables."""
    parts = [f"{name}={os.environ[name]}" if name in os.environ else f"{name} unset" for name in MALLOC_VARS]
    return f"glibc allocator: {allocator.state} (" + ", ".join(parts) + ")"


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__, datasets=["cifar10"], ipcs=[1, 10, 50], seeds=1)
    p.set_defaults(batch_real=256, eval_epochs=1000)
    p.add_argument("--reps", type=int, default=3, help="timed iterations / blocks per cell (after one warm-up)")
    p.add_argument("--methods", nargs="+", default=["dm", "dm+cc+cm"], choices=list(METHODS))
    p.add_argument("--cc-featnet-arch", default="resnet18",
                   help="CC feature net, randomly initialised (timing does not depend on its weights)")
    p.add_argument("--net-width", type=int, default=128, help="ConvNet width (distillation and evaluation)")
    p.add_argument("--train-per-class", type=int, default=500, help="random training images per class")
    p.add_argument("--test-images", type=int, default=10_000, help="images in the timed test pass")
    p.add_argument("--parts", nargs="+", default=["distill", "eval"], choices=["distill", "eval"])
    args = p.parse_args(argv)
    setup(args)
    if args.reps < 1:
        p.error("--reps must be >= 1")
    torch.manual_seed(0)  # nets are built (one global-RNG draw) before their weights are re-drawn: keep even that fixed

    peak = matmul_peak()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, float32; {malloc_line()}")
    print(f"fp32 matmul peak (best of 5 torch.mm 2048x2048): {peak / 1e9:.1f} GFLOP/s; median (min-max) of "
          f"{args.reps} rep(s) after one warm-up; reference = the per-class NCHW loop of distill_lib.reference\n")
    for name in args.datasets:
        data = random_data(name, max(args.train_per_class, args.batch_real, max(args.ipcs)), args.test_images)
        shape = f"{data.channels}x{data.image_size[0]}x{data.image_size[1]}, {data.num_classes} classes"
        if "distill" in args.parts:
            print(f"## Distillation, seconds per iteration: {name} shapes ({shape}), ConvNet width {args.net_width} "
                  f"depth 3 instance norm, batch_real {args.batch_real}, full DSA; CC feature net "
                  f"{args.cc_featnet_arch}, randomly initialised, eval mode\n")
            print("| method | IPC | compiled | library s/it | reference s/it | reference / library | GFLOP/it | "
                  "floor s/it | library / floor | library warm-up s |")
            print("|---|---|---|---|---|---|---|---|---|---|")
            for method in args.methods:
                for ipc in args.ipcs:
                    config = DistillConfig(dataset=name, ipc=ipc, batch_real=args.batch_real, net_width=args.net_width,
                                           featnet_recipe="default", featnet_arch=args.cc_featnet_arch,
                                           **METHODS[method])
                    lib, ref, warm_up, compiled = time_distill(config, data, args.reps)
                    flops = sum(distill_flops(config, data, min(args.batch_real, data.class_count(0)),
                                              args.cc_featnet_arch).values())
                    floor = flops / peak
                    print(f"| {LABELS[method]} | {ipc} | {'yes' if compiled else 'no'} | {summary(lib)} | "
                          f"{summary(ref)} | {statistics.median(ref) / statistics.median(lib):.2f} | "
                          f"{flops / 1e9:.4g} | {floor:.3g} | {statistics.median(lib) / floor:.2f} | {warm_up:.1f} |",
                          flush=True)
            print()
        if "eval" in args.parts:
            print(f"## Evaluation, seconds per model: {name} shapes, ConvNet width {args.net_width}, batch 256, DSA; "
                  f"test pass over {args.test_images} images; per model = {args.eval_epochs} epochs + one test pass\n")
            print("| IPC | compiled | library s/epoch | reference s/epoch | ref / lib | library s/test | "
                  "reference s/test | ref / lib | library s/model | reference s/model | ref / lib | floor s/model | "
                  "library / floor | library warm-up s |")
            print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
            protocol = EvalProtocol(epochs=args.eval_epochs, num_models=args.models, device="cpu")  # its "auto" rule
            for ipc in args.ipcs:
                t = time_eval(data, ipc, args.net_width, args.reps, protocol)
                med = {k: statistics.median(v) for k, v in t.items() if isinstance(v, list)}
                lib_model = args.eval_epochs * med["lib_epoch"] + med["lib_test"]
                ref_model = args.eval_epochs * med["ref_epoch"] + med["ref_test"]
                epoch_flops, test_flops = eval_flops(data, ipc, args.net_width, args.test_images)
                floor = (args.eval_epochs * epoch_flops + test_flops) / peak
                print(f"| {ipc} | {'yes' if t['compile'] else 'no'} | {summary(t['lib_epoch'])} | "
                      f"{summary(t['ref_epoch'])} | "
                      f"{med['ref_epoch'] / med['lib_epoch']:.2f} | {summary(t['lib_test'])} | "
                      f"{summary(t['ref_test'])} | {med['ref_test'] / med['lib_test']:.2f} | {lib_model:.1f} | "
                      f"{ref_model:.1f} | {ref_model / lib_model:.2f} | {floor:.1f} | {lib_model / floor:.2f} | "
                      f"{t['warm_up']:.1f} |",
                      flush=True)
            print("\n(epochs timed in blocks of about 1000 training images; per-model floor: forward + input and "
                  "weight gradients ~3x the forward's conv/linear FLOP per epoch, plus the test forward)\n")
    write_results("speed", args, argv=argv)


if __name__ == "__main__":
    main()
