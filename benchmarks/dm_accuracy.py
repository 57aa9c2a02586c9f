"""DM vs a random real subset of the same size, at a stated CPU budget. Prints a markdown table.

    python benchmarks/dm_accuracy.py                       # Fashion-MNIST, CIFAR-10, MNIST at IPC 1/10/50
    python benchmarks/dm_accuracy.py --datasets cifar10 --ipcs 10 --iterations 200 --seeds 2

Needs the data sets (DISTILL_DATA, or ../shared/data beside the checkout). Each cell (dataset, IPC, method, seed) is
cached on disk under its full config (distill_lib.sweep), so an interrupted run continues where it stopped and a wider grid only
computes the new cells.
"""
from __future__ import annotations

from common import parser, setup
from distill_lib import DistillConfig, EvalProtocol
from distill_lib.sweep import Cell, pooled, run_cell


def main() -> None:
    p = parser(__doc__, datasets=["fashion_mnist", "cifar10", "mnist"], ipcs=[1, 10, 50], seeds=1)
    args = p.parse_args()
    setup(args)

    protocol = EvalProtocol(epochs=args.eval_epochs, num_models=args.models)
    print(f"Budget: DM {args.iterations} iterations (batch_real {args.batch_real}, init real, full DSA); "
          f"evaluation {protocol.describe()}; {args.seeds} seed(s); mean ± std over seeds x models.\n")
    print("| dataset | IPC | random subset | DM | DM - random |")
    print("|---|---|---|---|---|")
    for dataset in args.datasets:
        for ipc in args.ipcs:
            configs = [DistillConfig(dataset=dataset, ipc=ipc, iterations=args.iterations,
                                     batch_real=args.batch_real, seed=s) for s in range(args.seeds)]
            random, dm = (pooled([run_cell(Cell(c, protocol, method)) for c in configs])
                          for method in ("random", "distill"))
            print(f"| {dataset} | {ipc} | {random} | {dm} | {100 * (dm.mean - random.mean):+.2f} |", flush=True)


if __name__ == "__main__":
    main()
