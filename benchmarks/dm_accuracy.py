"""DM vs a random real subset of the same size, at a stated CPU budget. Prints a markdown table.

    python benchmarks/dm_accuracy.py                       # Fashion-MNIST, CIFAR-10, MNIST at IPC 1/10/50
    python benchmarks/dm_accuracy.py --datasets cifar10 --ipcs 10 --iterations 200 --seeds 2

Needs the data sets (DISTILL_DATA, or ../shared/data beside the checkout). Each cell (dataset, IPC, method, seed) is
cached on disk under its full config (distill_lib.sweep), so an interrupted run continues where it stopped and a wider grid only
computes the new cells.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill_lib import DistillConfig, EvalProtocol  # noqa: E402
from distill_lib.sweep import Cell, pooled, run_cell  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["fashion_mnist", "cifar10", "mnist"])
    p.add_argument("--ipcs", nargs="+", type=int, default=[1, 10, 50])
    p.add_argument("--iterations", type=int, default=100, help="DM iterations per run")
    p.add_argument("--batch-real", type=int, default=128)
    p.add_argument("--eval-epochs", type=int, default=200)
    p.add_argument("--models", type=int, default=3, help="evaluation networks per synthetic set")
    p.add_argument("--seeds", type=int, default=1, help="distillation / subset seeds")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if "DISTILL_DATA" not in os.environ and SHARED_DATA.exists():
        os.environ["DISTILL_DATA"] = str(SHARED_DATA)

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
