"""Class-incremental learning with a memory of IPC images per class: random, herding, DM, DM+CC+CM. Prints tables.

    python benchmarks/continual.py --threads 1                  # Fashion-MNIST and CIFAR-10, IPC 10, 5 tasks of 2
    python benchmarks/continual.py --datasets cifar10 --seeds 5 --eval-epochs 300

Protocol (GDumb-style, as in the DM paper; distill_lib.continual): the classes arrive in ``--tasks`` tasks in a
seeded random order; after each task a memory of IPC images per class of that task joins the memory, and a fresh
ConvNet is trained from scratch on the whole memory and tested on the test images of every class seen so far.
Final accuracy: after the last task (all classes); average incremental accuracy: the mean over tasks of the accuracy
after each task. Mean ± std over ``--seeds`` class orders x ``--models`` learner networks, each with its own learner
seed. The memories come from one seed (``--memory-seed``) shared by all orders: a class's memory does not depend on
the order, so the spread is that of class orders and learners, not of memory draws.

Every memory (distill_lib.continual.build_memory) and every run (one builder, order and learner seed) is cached on
disk under its full config, so an interrupted run continues where it stopped and adding a builder computes only it.
"""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from common import REPO, parser, setup, write_results
from distill_lib import DistillConfig, EvalResult, load_dataset
from distill_lib.cache import DiskCache
from distill_lib.continual import BUILDERS, Builder, make_scenario, run_continual
from distill_lib.train import TrainSpec

LABELS = {"random": "random", "herding": "herding", "dm": "DM", "dm_cc_cm": "DM+CC+CM"}


def builders(names: list[str], dataset: str, ipc: int, args) -> list[Builder]:
    """The memory builders at this budget; only DM+CC+CM carries the CC feature-net and lambda settings."""
    dm = DistillConfig(dataset=dataset, ipc=ipc, iterations=args.iterations, batch_real=args.batch_real)
    both = replace(dm, featnet_recipe="default", featnet_arch=args.featnet_arch, featnet_epochs=args.featnet_epochs,
                   featnet_per_class=args.featnet_per_class, lambda_cc=args.lambda_cc, lambda_cm=args.lambda_cm)
    made = {"random": Builder("random"), "herding": Builder("herding", feature_model=args.herding_model),
            "dm": Builder("dm", dm_config=dm), "dm_cc_cm": Builder("dm_cc_cm", dm_config=both)}
    return [made[name] for name in names]


def plot(curves: dict, path: Path) -> None:
    """Accuracy vs classes seen, one panel per (dataset, IPC), one line per builder with a ±std band."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.6 * len(curves), 3.6), squeeze=False, layout="constrained")
    for ax, ((dataset, ipc), lines) in zip(axes[0], curves.items()):
        for name, (seen, runs) in lines.items():
            mean = [100 * statistics.fmean(col) for col in zip(*runs)]
            std = [100 * statistics.pstdev(col) for col in zip(*runs)]
            ax.plot(seen, mean, marker="o", label=LABELS[name])
            ax.fill_between(seen, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
        ax.set(title=f"{dataset}, {ipc} images per class", xlabel="classes seen", ylabel="test accuracy (%)",
               xticks=seen)
        ax.grid(alpha=0.3)
        ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"\nFigure: {path}")


def main() -> None:
    p = parser(__doc__, datasets=["fashion_mnist", "cifar10"], ipcs=[10], seeds=3)
    # The default budget (its measured cost: docs/results.md, continual learning).
    p.set_defaults(iterations=50, eval_epochs=20, models=1)
    p.add_argument("--tasks", type=int, default=5, help="tasks the classes arrive in")
    p.add_argument("--builders", nargs="+", choices=BUILDERS, default=list(BUILDERS))
    p.add_argument("--memory-seed", type=int, default=0, help="seed of every memory (shared by the class orders)")
    p.add_argument("--lr", type=float, default=0.01, help="learner learning rate (x0.1 at half the epochs)")
    p.add_argument("--batch-size", type=int, default=256, help="learner batch size")
    p.add_argument("--test-per-class", type=int, default=200,
                   help="test on this many (seeded) test images per class; 0: the whole test set")
    p.add_argument("--herding-model", default="convnet", help="herding's seeded random feature net")
    p.add_argument("--featnet-arch", default="convnet", help="CC's feature net (DM+CC+CM)")
    p.add_argument("--featnet-epochs", type=int, default=2)
    p.add_argument("--featnet-per-class", type=int, default=500, help="training images per class for the feature net")
    p.add_argument("--lambda-cc", type=float, default=0.05,
                   help="the CVPR 2024 authors' weight for DM, which this benchmark's feature net was run with")
    p.add_argument("--lambda-cm", type=float, default=DistillConfig().resolved().lambda_cm)
    p.add_argument("--figure", default=str(REPO / "figures" / "continual_curves.png"), help="'' for none")
    shared = {"seeds": "class orders (scenario seeds)", "models": "learner networks per class order",
              "eval_epochs": "epochs of each task's learner"}
    for action in p._actions:  # the shared flags, in this benchmark's words
        action.help = shared.get(action.dest, action.help)
    args = p.parse_args()
    setup(args)
    spec = TrainSpec(epochs=args.eval_epochs, lr=args.lr, batch_size=args.batch_size)
    budget = (f"Budget: memories of {args.ipcs} images per class, seed {args.memory_seed}; DM / DM+CC+CM "
              f"{args.iterations} iterations, batch_real {args.batch_real}, init real, full DSA; CC feature net "
              f"{args.featnet_arch} trained {args.featnet_epochs} epochs on {args.featnet_per_class} images per "
              f"class, simplified CC, lambda_CC {args.lambda_cc}, lambda_CM {args.lambda_cm}; herding on "
              f"L2-normalised embeddings of a seeded random {args.herding_model}; learner: fresh ConvNet per task, "
              f"{spec.epochs} epochs, lr {spec.lr} (x0.1 at half), momentum {spec.momentum}, wd {spec.weight_decay}, "
              f"batch {spec.batch_size}, DSA on; tested on {args.test_per_class or 'all'} test images per class "
              f"seen; {args.tasks} tasks; {args.seeds} class orders x {args.models} learner(s); mean ± std over "
              f"those.")
    print(budget + "\n", flush=True)
    cache = DiskCache("continual")
    rows, curves = [], {}
    for dataset in args.datasets:
        data = load_dataset(dataset)
        if args.test_per_class:  # the same seeded test images for every builder and order: paired comparisons
            data = data.subset(test_per_class=args.test_per_class)
        for ipc in args.ipcs:
            lines = curves.setdefault((dataset, ipc), {})
            for builder in builders(args.builders, dataset, ipc, args):
                runs = []
                for order in range(args.seeds):
                    scenario = make_scenario(data.num_classes, args.tasks, seed=order)
                    for m in range(args.models):
                        start = time.perf_counter()
                        result = run_continual(data, scenario, builder, ipc, spec, seed=order * args.models + m,
                                               memory_seed=args.memory_seed, cache=cache)
                        runs.append(result)
                        print(f"  [run] {dataset} ipc{ipc} {builder.name} order {order} learner {m}: "
                              + " ".join(f"{100 * a:.1f}" for a in result.accuracies)
                              + f" ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
                seen = [len(s) for s in runs[0].seen]
                lines[builder.name] = (seen, [r.accuracies for r in runs])
                rows.append((dataset, ipc, builder.name, EvalResult(tuple(r.final for r in runs)),
                             EvalResult(tuple(r.average for r in runs)),
                             [statistics.fmean(col) for col in zip(*(r.accuracies for r in runs))], seen))

    print("| dataset | IPC | memory | final accuracy | average incremental accuracy | mean accuracy after each task |")
    print("|---|---|---|---|---|---|")
    for dataset, ipc, name, final, average, curve, seen in rows:
        steps = " / ".join(f"{100 * a:.1f}" for a in curve)
        print(f"| {dataset} | {ipc} | {LABELS[name]} | {final} | {average} | {steps} ({'/'.join(map(str, seen))} "
              "classes) |")
    if args.figure:
        plot(curves, Path(args.figure))
    write_results("continual", args, budget)


if __name__ == "__main__":
    main()
