"""CC's feature nets: pretrain pools of one or more recipes, each net by one torchrun rank, and print each net's
accuracy, training seconds and seconds per epoch.

    python benchmarks/featnets.py --dataset cifar10 --recipe convnet --pool 4
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 4 benchmarks/featnets.py --dataset cifar10 --recipe paper --pool 4
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 benchmarks/featnets.py --recipe convnet paper:1 default:1 --pool 1
    python benchmarks/featnets.py --dataset cifar10 --cost 10 --threads 1     # seconds per batch of every recipe

Each ``--recipe`` entry is ``NAME`` or ``NAME:EPOCHS`` (``--epochs``, else the recipe's own length, where it gives
none). A pool is the recipe's spec (distill_lib.featnet.RECIPES) with seeds --seed, --seed + 1, ...: exactly the pool
a distillation with ``--featnet-recipe R --featnet-epochs E --featnet-pool K --seed S`` draws from, so that run finds
every net in the cache. ``--validation K`` also pretrains the pool on the training set less K images per class, the
nets a sweep that chooses lambda on that split uses. Each net is cached under its spec with its test accuracy and
training seconds; rerunning prints the same table from the cache. All the recipes' nets are dealt over the ranks
together, and a net's seconds over its epochs is the measured end-to-end cost of one epoch of its recipe.

``--cost N`` trains no net to the end: it times N training batches of every recipe on one process (after two
warm-up batches) and extrapolates to an epoch and to the recipe's length: a throughput measurement, not a run.
"""
from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import replace

import torch

from common import results_flags, say, setup, write_results
from distill_lib import distributed
from distill_lib.data import RealData, load_dataset
from distill_lib.featnet import RECIPES, FeatNetPool, FeatNetSpec, pretrained, recipe
from distill_lib.models import MODEL_NAMES, get_model
from distill_lib.train import train_steps

WARMUP_BATCHES = 2


def pool_rows(datas: dict[str, RealData], specs: list[FeatNetSpec], size: int) -> list[tuple[str, FeatNetSpec, dict]]:
    """(split name, member spec, {accuracy, seconds}) of every member of every spec's pool on every split, each
    trained (or read from the cache) by one rank, dealt round-robin as sweeps deal their feature nets
    (distill_lib.sweep)."""
    todo = [(name, member) for spec in specs for name in datas for member in FeatNetPool.specs(spec, size)]
    progress = distributed.is_main()  # rank 0's nets show their progress bars; inside spread every rank is "main"

    def compute(i: int) -> dict:
        name, member = todo[i]
        entry = pretrained(datas[name], member, progress)
        return {"accuracy": float(entry["accuracy"]), "seconds": entry.get("seconds"),
                "machine": entry.get("machine", "not recorded")}

    return [(name, member, record) for (name, member), record in zip(todo, distributed.spread(len(todo), compute))]


def recipe_entry(text: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME:EPOCHS`` of a ``--recipe`` entry."""
    name, _, epochs = text.partition(":")
    if name not in RECIPES:
        raise argparse.ArgumentTypeError(f"unknown recipe {name!r}; expected one of {tuple(RECIPES)}")
    try:
        return name, int(epochs) if epochs else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME or NAME:EPOCHS (e.g. paper:10), got {text!r}") from None


def describe(name: str, spec: FeatNetSpec) -> str:
    return (f"{name!r}: {spec.arch}, {spec.epochs} epochs, batch {spec.batch_size}, lr {spec.lr:g} ({spec.schedule}), "
            f"augmentation {spec.dsa_strategy}, "
            f"{'the whole training set' if spec.per_class is None else f'{spec.per_class} images per class'}")


def batch_seconds(data: RealData, spec: FeatNetSpec, batches: int) -> float:
    """Mean wall-clock seconds of one training step of ``spec`` (its net, batch size, augmentation and optimiser)
    over ``batches`` batches of ``data``'s training images, after WARMUP_BATCHES untimed ones."""
    generator = torch.Generator().manual_seed(spec.seed)
    net = get_model(spec.arch, data.channels, data.num_classes, data.image_size)
    net.reset_parameters(generator)
    optimizer = spec.train_spec().optimizer(net)
    x, y = data.train_tensors()
    order = torch.randperm(len(x), generator=generator)[:(WARMUP_BATCHES + batches) * spec.batch_size]
    steps = [(x[idx], y[idx]) for idx in order.split(spec.batch_size)]
    train_steps(net, optimizer, steps[:WARMUP_BATCHES], generator, spec.dsa_strategy)
    start = time.perf_counter()
    train_steps(net, optimizer, steps[WARMUP_BATCHES:], generator, spec.dsa_strategy)
    return (time.perf_counter() - start) / batches


def cost_table(data: RealData, batches: int) -> None:
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    say(f"Cost of one training batch of each recipe on {data.name} ({len(data.x_train)} training images), "
        f"{torch.get_num_threads()} thread(s), {batches} timed batches after {WARMUP_BATCHES} warm-up, load average "
        f"{load} (1 / 5 / 15 min) at the start; epochs and nets extrapolated from the batch time.\n")
    say("| recipe | net | batch | augmentation | s / batch | batches / epoch | s / epoch | epochs | h / net |")
    say("|---|---|---|---|---|---|---|---|---|")
    for name, spec in RECIPES.items():
        seconds = batch_seconds(data, spec, batches)
        per_epoch = math.ceil(len(data.x_train) / spec.batch_size)
        say(f"| {name} | {spec.arch} | {spec.batch_size} | {spec.dsa_strategy} | {seconds:.2f} | {per_epoch} | "
            f"{seconds * per_epoch:.0f} | {spec.epochs} | {seconds * per_epoch * spec.epochs / 3600:.2f} |",
            flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--recipe", nargs="+", type=recipe_entry, default=[("paper", None)], metavar="NAME[:EPOCHS]",
                   help=f"how each net is trained, one pool per entry: {', '.join(RECIPES)}, each with its epochs")
    p.add_argument("--epochs", type=int, help="training epochs of an entry without its own (default: the recipe's)")
    p.add_argument("--arch", choices=MODEL_NAMES, help="the net (default: the recipe's)")
    p.add_argument("--pool", type=int, default=4, help="nets in the pool (seeds --seed, --seed + 1, ...)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first net (a distillation's --seed)")
    p.add_argument("--validation", type=int, default=0,
                   help="also pretrain the pool on the training set less this many images per class (0: not)")
    p.add_argument("--cost", type=int, default=0, metavar="BATCHES",
                   help="instead: time this many training batches of every recipe (one process)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    results_flags(p)
    args = p.parse_args()
    setup(args)
    distributed.setup("cpu")  # under torchrun: join now, so only rank 0 prints
    data = load_dataset(args.dataset)
    if args.cost:
        cost_table(data, args.cost)
        write_results("featnets", args)
        return

    specs = {}
    for name, epochs in args.recipe:
        overrides = {k: v for k, v in (("epochs", epochs or args.epochs), ("arch", args.arch)) if v is not None}
        specs[recipe(name, seed=args.seed, **overrides)] = name
    datas = {"full": data} | ({f"val{args.validation}": data.validation_split(args.validation)}
                              if args.validation else {})
    header = (f"Feature nets on {args.dataset}, {args.pool} seed(s) from {args.seed} per recipe, "
              f"{distributed.world_size()} process(es), {torch.get_num_threads()} thread(s) each")
    described = [describe(name, spec) for spec, name in specs.items()]
    say(header + ":\n\n" + "\n".join(f"- {line}" for line in described) + "\n", flush=True)
    rows = pool_rows(datas, list(specs), args.pool)
    say("| recipe | epochs | trained on | seed | accuracy (test split) | training seconds | s / epoch | machine |")
    say("|---|---|---|---|---|---|---|---|")
    for split, member, record in rows:
        seconds, per_epoch = (("-", "-") if record["seconds"] is None else
                              (f"{record['seconds']:.0f}", f"{record['seconds'] / member.epochs:.0f}"))
        say(f"| {specs[replace(member, seed=args.seed)]} | {member.epochs} | {split} | {member.seed} | "
            f"{100 * record['accuracy']:.2f} % | {seconds} | {per_epoch} | {record['machine']} |")
    write_results("featnets", args, f"{header}: " + "; ".join(described) + ".")


if __name__ == "__main__":
    main()
