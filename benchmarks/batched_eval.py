"""Does training the K evaluation nets of a cell together (torch.func.vmap) beat training them one by one here?

    python benchmarks/batched_eval.py                                   # CIFAR-10 shapes, IPC 1 and 10, 3 nets
    OMP_NUM_THREADS=1 python benchmarks/batched_eval.py --threads 1 --compiled --epochs 50
    OMP_NUM_THREADS=1 python benchmarks/batched_eval.py --threads 1 --ipcs 1 --epochs 10 --profile 15

``distill_lib.evaluate`` trains the ``num_models`` nets of a synthetic set one after another. A synthetic set is
small (10 images at IPC 1, 100 at IPC 10: one batch per epoch), so each step of one net is a few small kernels; the
alternative timed here stacks the K nets' parameters and trains them as one network through ``torch.func.vmap``
(:func:`train_classifiers_together`), one batched forward and backward per step instead of K. It draws each net's
batch order and DSA from that net's own generator and takes ``torch.optim.SGD``'s steps, so it ends where the
one-by-one loop ends (``tests/test_batched_eval.py`` checks it against ``train_classifier``): only the time differs.

Timed per data set and IPC, on random tensors of the data set's shape (the time does not depend on the pixels), K =
``--models`` default ConvNets (width 128, depth 3, instance norm), ``TrainSpec`` defaults but ``--epochs`` (batch
256, full DSA, step decay), the initial weights and generators of ``distill_lib.evaluate`` (seed 0):

* sequential: ``train_classifier`` on each net in turn, eager (what evaluate does with compile off);
* sequential compiled (``--compiled``): the same with ``TrainSpec(compile=True)``;
* batched: ``train_classifiers_together`` on the K nets (eager: vmap over a compiled net is not supported here).

Every path first trains its K nets for 2 untimed epochs, where one-time costs fall (first calls of the kernels; the
cold compile, whose seconds get their own column). Then each rep runs every path once, in turn, so a change of load
on the machine hits all of them; the table gives seconds for all K nets as the median over ``--reps`` with
(min-max), and each sequential path's time over the batched path's time in the same rep, median over reps (below 1:
training together is slower).

``--profile ROWS`` profiles instead of timing: the sequential and the batched path (eager) train ``--epochs`` epochs
each under ``torch.profiler`` after their warm-up, and a table per IPC lists the ROWS ops costliest on either path
with their self CPU seconds, then all ops (results/batched_eval_profile.*); it shows which kernels vmap makes dearer.
The common flags --iterations, --batch-real, --eval-epochs and --seeds are not used here.
"""
from __future__ import annotations

import statistics
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from common import parser, say, setup, write_results
from distill_lib import augment, seeding
from distill_lib.data import DATASETS
from distill_lib.models import get_model
from distill_lib.train import TrainSpec, learning_rate, progress_bar, train_classifier
from speed import summary, timed

WARM_UP = 2  # untimed epochs of every path before timing: the cold compile and first-call set-up fall there


# ------------------------------------------------------------------------------------------------------------
# The batched trainer: K nets as one vmapped net, with train_classifier's draws and torch.optim.SGD's arithmetic.

def train_classifiers_together(models: list[nn.Module], x: torch.Tensor, y: torch.Tensor, spec: TrainSpec,
                               generators: list[torch.Generator], progress: bool | str = False) -> list[list[float]]:
    """Train K networks of one architecture in place on (x, y) as one vmapped network; returns each one's epoch losses.

    Model k draws its batch order and DSA from ``generators[k]`` in the order :func:`train_classifier` draws them (a
    randperm per epoch, then family and parameters per batch) and takes the steps of ``torch.optim.SGD``, so it ends
    where ``train_classifier(models[k], x, y, spec, generators[k])`` ends, up to float rounding; the K nets' steps
    are one forward and backward of batched kernels. Models with buffers (batch norm's running statistics) are
    refused: vmap cannot update them in place. Eager only (``spec.compile`` is ignored).
    """
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need as many labels as images (and at least one), got {len(x)} and {len(y)}")
    if len(models) != len(generators) or not models:
        raise ValueError(f"need one generator per model (and at least one model), got {len(generators)} and "
                         f"{len(models)}")
    if any(True for model in models for _ in model.buffers()):
        raise ValueError("train_classifiers_together cannot train models with buffers (e.g. batch norm)")
    for model in models:
        model.train()
    params = {name: p.detach() for name, p in torch.func.stack_module_state(models)[0].items()}
    template = models[0]

    def loss_of(p, inputs, labels):
        return F.cross_entropy(torch.func.functional_call(template, p, (inputs,)), labels)

    step = torch.func.vmap(torch.func.grad_and_value(loss_of))
    momenta: dict[str, torch.Tensor] = {}
    losses = []
    bar = progress_bar(spec, len(x), progress)
    try:
        for epoch in range(spec.epochs):
            lr = learning_rate(spec, epoch)
            orders = [torch.randperm(len(x), generator=g).to(x.device).split(spec.batch_size) for g in generators]
            totals = [0.0] * len(models)
            for indices in zip(*orders):
                inputs = torch.stack([augment.augment(x[i], spec.dsa_strategy, g) for i, g in zip(indices, generators)])
                grads, loss = step(params, inputs, torch.stack([y[i] for i in indices]))
                sgd_step(params, grads, momenta, lr, spec)
                totals = [total + value * len(indices[0]) for total, value in zip(totals, loss.tolist())]
                bar.update(1)
            losses.append([total / len(x) for total in totals])
            bar.set_postfix(epoch=f"{epoch + 1}/{spec.epochs}", refresh=False)
    finally:
        bar.close()
    with torch.no_grad():
        for k, model in enumerate(models):
            for name, p in model.named_parameters():
                p.copy_(params[name][k])
    return [list(model_losses) for model_losses in zip(*losses)]


@torch.no_grad()
def sgd_step(params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], momenta: dict[str, torch.Tensor],
             lr: float, spec: TrainSpec) -> None:
    """One step of ``torch.optim.SGD`` (no dampening, no Nesterov) on ``params`` in place, with its arithmetic:
    weight decay added to the gradient, the momentum buffer started as the first gradient, then m * buf + g. The
    stacked parameters are no ``nn.Parameter`` of one module, so the optimizer itself cannot step them."""
    for name, p in params.items():
        g = grads[name]
        if spec.weight_decay:
            g = g.add(p, alpha=spec.weight_decay)
        if spec.momentum:
            if name in momenta:
                g = momenta[name].mul_(spec.momentum).add_(g)
            else:
                g = momenta[name] = g.clone()
        p.add_(g, alpha=-lr)


# ------------------------------------------------------------------------------------------------------------
# Timing

def fresh_nets(name: str, k: int, seed: int = 0) -> tuple[list[nn.Module], list[torch.Generator]]:
    """K default ConvNets of data set ``name``'s shape with evaluate's initial weights, and their training generators
    (drawn afresh for every timed run, so every path trains from the same state)."""
    spec = DATASETS[name]
    nets = []
    for i in range(k):
        net = get_model("convnet", spec.channels, spec.num_classes, spec.image_size)
        net.reset_parameters(seeding.generator(seed, seeding.EVAL_MODEL, i, 0))
        nets.append(net)
    return nets, [seeding.generator(seed, seeding.EVAL_MODEL, i, 1) for i in range(k)]


def training_paths(name: str, ipc: int, k: int, compiled: bool) -> dict[str, Callable[[int], None]]:
    """Each path (sequential, [sequential compiled,] batched) as a function training fresh K nets for its argument's
    epochs on random tensors of data set ``name``'s shape, ``ipc`` images per class."""
    spec = DATASETS[name]
    g = torch.Generator().manual_seed(ipc)
    x = torch.randn(spec.num_classes * ipc, spec.channels, *spec.image_size, generator=g)
    y = torch.arange(spec.num_classes).repeat_interleave(ipc)

    def sequential(train: TrainSpec):
        nets, generators = fresh_nets(name, k)
        for net, generator in zip(nets, generators):
            train_classifier(net, x, y, train, generator)

    def batched(train: TrainSpec):
        nets, generators = fresh_nets(name, k)
        train_classifiers_together(nets, x, y, train, generators)

    paths = {"sequential": lambda n: sequential(TrainSpec(epochs=n))}
    if compiled:
        paths["sequential compiled"] = lambda n: sequential(TrainSpec(epochs=n, compile=True))
    paths["batched"] = lambda n: batched(TrainSpec(epochs=n))
    return paths


def time_paths(name: str, ipc: int, epochs: int, k: int, reps: int, compiled: bool) -> tuple[dict, float | None]:
    """Seconds of each path per rep, the paths run in turn within every rep after an untimed warm-up of each, and
    the seconds of the compiled path's warm-up (None without ``compiled``)."""
    paths = training_paths(name, ipc, k, compiled)
    warm_ups = {path: timed(lambda: fn(WARM_UP)) for path, fn in paths.items()}
    times = {path: [] for path in paths}
    for _ in range(reps):
        for path, fn in paths.items():
            times[path].append(timed(lambda: fn(epochs)))
    return times, warm_ups["sequential compiled"] if compiled else None


def profile_paths(name: str, ipc: int, epochs: int, k: int, rows: int) -> None:
    """Print where the time of the eager paths goes: self CPU seconds by op (torch.profiler) of ``epochs`` epochs of
    the sequential and the batched path, after the warm-up; the ``rows`` ops costliest on either path, then all."""
    seconds = {}
    for path, fn in training_paths(name, ipc, k, compiled=False).items():
        fn(WARM_UP)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn(epochs)
        seconds[path] = {event.key: event.self_cpu_time_total / 1e6 for event in prof.key_averages()}
    seq, bat = seconds["sequential"], seconds["batched"]
    ops = sorted(set(seq) | set(bat), key=lambda op: -max(seq.get(op, 0.0), bat.get(op, 0.0)))
    say(f"| op (IPC {ipc}, {epochs} epochs) | sequential self s | batched self s | batched - sequential s |")
    say("|---|---|---|---|")
    for op in ops[:rows]:
        say(f"| {op} | {seq.get(op, 0.0):.3f} | {bat.get(op, 0.0):.3f} | {bat.get(op, 0.0) - seq.get(op, 0.0):+.3f} |")
    total_seq, total_bat = sum(seq.values()), sum(bat.values())
    say(f"| all ops | {total_seq:.3f} | {total_bat:.3f} | {total_bat - total_seq:+.3f} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__, datasets=["cifar10"], ipcs=[1, 10], seeds=1)
    p.add_argument("--epochs", type=int, default=100, help="training epochs per net")
    p.add_argument("--reps", type=int, default=3, help="timed runs of every path per IPC (in turn)")
    p.add_argument("--compiled", action="store_true", help="also time the sequential path through torch.compile")
    p.add_argument("--profile", type=int, default=0, metavar="ROWS",
                   help="instead of timing, profile the eager paths and print self seconds of the ROWS costliest ops "
                        "(results/batched_eval_profile.*)")
    args = p.parse_args(argv)
    if args.reps < 1 or args.epochs < 1 or args.models < 1 or args.profile < 0:
        p.error("--reps, --epochs and --models must be >= 1, --profile >= 0")
    setup(args)
    budget = (f"{args.models} default ConvNets (width 128, depth 3, instance norm) per cell, {args.epochs} epochs "
              f"each, TrainSpec defaults (batch 256, full DSA); random tensors; torch {torch.__version__}, "
              f"{torch.get_num_threads()} thread(s), CPU, float32; " +
              ("self CPU seconds by op under torch.profiler, one run per path after its warm-up" if args.profile else
               f"seconds for all {args.models} nets, median (min-max) of {args.reps} rep(s), paths run in turn in "
               f"every rep"))
    say(budget + "\n")
    for name in args.datasets:
        spec = DATASETS[name]
        shape = f"{spec.channels}x{spec.image_size[0]}x{spec.image_size[1]}, {spec.num_classes} classes"
        if args.profile:
            for ipc in args.ipcs:
                say(f"## Where the time goes: {name} shapes ({shape}), IPC {ipc}\n")
                profile_paths(name, ipc, args.epochs, args.models, args.profile)
                say()
            continue
        say(f"## Sequential vs batched training: {name} shapes ({shape})\n")
        columns = ["IPC", "epochs", "sequential s", *(["sequential compiled s"] if args.compiled else []),
                   "batched s", "sequential / batched",
                   *(["sequential compiled / batched", "compile warm-up s"] if args.compiled else [])]
        say("| " + " | ".join(columns) + " |")
        say("|" + "---|" * len(columns))
        for ipc in args.ipcs:
            times, warm_up = time_paths(name, ipc, args.epochs, args.models, args.reps, args.compiled)
            ratios = {path: statistics.median([s / b for s, b in zip(times[path], times["batched"])])
                      for path in times if path != "batched"}
            cells = [str(ipc), str(args.epochs), *(summary(times[path]) for path in times),
                     *(f"{ratio:.2f}" for ratio in ratios.values()),
                     *([f"{warm_up:.1f}"] if args.compiled else [])]
            say("| " + " | ".join(cells) + " |", flush=True)
        say()
    write_results("batched_eval_profile" if args.profile else "batched_eval", args, budget, argv=argv,
                  script="batched_eval")


if __name__ == "__main__":
    main()
