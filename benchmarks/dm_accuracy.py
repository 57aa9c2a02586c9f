"""DM vs a random real subset of the same size, at a stated CPU budget. Prints a markdown table.

    python benchmarks/dm_accuracy.py                       # Fashion-MNIST, CIFAR-10, MNIST at IPC 1/10/50
    python benchmarks/dm_accuracy.py --datasets cifar10 --ipcs 10 --iterations 200 --seeds 2
    python benchmarks/dm_accuracy.py --ipcs 50 --lr-img 1 10 50 --init   # lr_img chosen on validation; DM's start
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 benchmarks/dm_accuracy.py --threads 1 ...   # both cores

Needs the data sets (DISTILL_DATA, or ../shared/data beside the checkout). Each cell (dataset, IPC, method, seed) is
cached on disk under its full config (distill_lib.sweep), so an interrupted run continues where it stopped and a wider
grid only computes the new cells.

With several ``--lr-img`` values, each (dataset, IPC) takes the one whose seed-0 set scores best on ``--validation``
held-out training images per class (``--val-models`` evaluation nets; the test set is not looked at). ``--init`` adds
a column with DM's starting images (real images of another draw than the random subset's) under the same protocol,
which splits "DM - random" into the draw and what DM changed. The validation cells and then the test cells are each
one :func:`distill_lib.sweep.run_cells` call, so under torchrun they are dealt over the processes.
"""
from __future__ import annotations

from dataclasses import replace

from common import parser, say, setup, validation_flags, validation_protocol, write_results
from distill_lib import DistillConfig, EvalProtocol, distributed
from distill_lib.sweep import Cell, choose, pooled, run_cells
from distill_lib.train import resolve_device


def main() -> None:
    p = parser(__doc__, datasets=["fashion_mnist", "cifar10", "mnist"], ipcs=[1, 10, 50], seeds=1)
    p.add_argument("--lr-img", nargs="+", type=float, default=[1.0], help="candidates, chosen on validation if > 1")
    validation_flags(p)
    p.add_argument("--init", action="store_true", help="also evaluate DM's initial images")
    args = p.parse_args()
    setup(args)

    protocol = EvalProtocol(epochs=args.eval_epochs, num_models=args.models)
    distributed.setup(resolve_device(protocol.device))  # under torchrun: join now, so only rank 0 prints
    choosing = len(args.lr_img) > 1
    lr_note = (f"lr_img chosen from {args.lr_img} per (dataset, IPC) on {args.validation} validation images per class "
               f"({args.val_models} net(s))" if choosing else f"lr_img {args.lr_img[0]:g}")
    budget = (f"Budget: DM {args.iterations} iterations (batch_real {args.batch_real}, init real, full DSA, "
              f"{lr_note}); evaluation {protocol.describe()}; {args.seeds} seed(s); mean ± std over seeds x models.")
    say(budget + "\n", flush=True)
    bases = [DistillConfig(dataset=dataset, ipc=ipc, iterations=args.iterations, batch_real=args.batch_real,
                           lr_img=args.lr_img[0]) for dataset in args.datasets for ipc in args.ipcs]
    if choosing:  # stage 1: every candidate of every (dataset, IPC), seed 0, on validation; one spread of cells
        picks = choose([{lr: replace(base, lr_img=lr) for lr in args.lr_img} for base in bases],
                       validation_protocol(args, protocol), args.validation)
        for base, (_, scores) in zip(bases, picks):
            say(f"  {base.dataset} ipc{base.ipc} validation: " +
                "; ".join(f"lr_img {lr:g}: {r}" for lr, r in scores.items()), flush=True)
        bases = [replace(base, lr_img=lr) for base, (lr, _) in zip(bases, picks)]

    # Stage 2: every method x seed of every (dataset, IPC) on the test set, one spread of cells.
    methods = ("random", "init", "distill") if args.init else ("random", "distill")
    cells = [Cell(replace(base, seed=s), protocol, m) for base in bases for m in methods for s in range(args.seeds)]
    results = iter(run_cells(cells))
    say("\n| dataset | IPC | lr_img | random subset |" + (" DM start |" if args.init else "") + " DM | DM - random |")
    say("|---|---|---|---|" + ("---|" if args.init else "") + "---|---|")
    for base in bases:
        r = {m: pooled([next(results) for _ in range(args.seeds)]) for m in methods}
        start = f" {r['init']} |" if args.init else ""
        say(f"| {base.dataset} | {base.ipc} | {base.lr_img:g} | {r['random']} |{start} {r['distill']} | "
            f"{100 * (r['distill'].mean - r['random'].mean):+.2f} |", flush=True)
    write_results("dm_accuracy", args, budget)


if __name__ == "__main__":
    main()
