"""DM vs a random real subset of the same size, at a stated CPU budget. Prints a markdown table.

    python benchmarks/dm_accuracy.py                       # MNIST, Fashion-MNIST, CIFAR-10 at IPC 1/10/50
    python benchmarks/dm_accuracy.py --datasets cifar10 --ipcs 10 --iterations 200

Needs the data sets (DISTILL_DATA, or ../shared/data beside the checkout). Each cell (dataset, IPC, method, seed) is
cached on disk under its full config, so an interrupted run continues where it stopped and a wider grid only
computes the new cells.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill_lib import DistillConfig, EvalProtocol, distill, evaluate, load_dataset, random_subset  # noqa: E402
from distill_lib.cache import DiskCache  # noqa: E402
from distill_lib.evaluate import EvalResult  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def run_cell(method: str, dataset: str, ipc: int, seed: int, args, protocol: EvalProtocol) -> EvalResult:
    """Accuracy of one (method, dataset, IPC, seed) cell, from the cache when it was computed before."""
    config = DistillConfig(dataset=dataset, ipc=ipc, iterations=args.iterations, batch_real=args.batch_real,
                           seed=seed)
    key = {"benchmark": "dm_accuracy", "method": method, "distill": asdict(config), "eval": asdict(protocol)}

    def compute():
        data = load_dataset(dataset)
        start = time.perf_counter()
        syn = random_subset(data, ipc, seed) if method == "random" else distill(config, data, progress=False)
        made = time.perf_counter() - start
        result = evaluate(syn, data, protocol)
        print(f"  {dataset} ipc{ipc} {method} seed{seed}: {result}  (make {made:.0f} s, "
              f"eval {time.perf_counter() - start - made:.0f} s)", file=sys.stderr, flush=True)
        return {"accuracies": list(result.accuracies)}

    value = DiskCache("benchmarks").get_or_compute(key, compute)
    return EvalResult(tuple(value["accuracies"]), asdict(protocol))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["mnist", "fashion_mnist", "cifar10"])
    p.add_argument("--ipcs", nargs="+", type=int, default=[1, 10, 50])
    p.add_argument("--iterations", type=int, default=200, help="DM iterations per run")
    p.add_argument("--batch-real", type=int, default=256)
    p.add_argument("--eval-epochs", type=int, default=300)
    p.add_argument("--models", type=int, default=2, help="evaluation networks per synthetic set")
    p.add_argument("--seeds", type=int, default=2, help="distillation / subset seeds")
    args = p.parse_args()
    if "DISTILL_DATA" not in os.environ and SHARED_DATA.exists():
        os.environ["DISTILL_DATA"] = str(SHARED_DATA)

    protocol = EvalProtocol(epochs=args.eval_epochs, num_models=args.models)
    print(f"Budget: DM {args.iterations} iterations (batch_real {args.batch_real}, init real, full DSA); "
          f"evaluation {protocol.describe()}; {args.seeds} seeds; mean ± std over seeds x models.\n")
    print("| dataset | IPC | random subset | DM | DM - random |")
    print("|---|---|---|---|---|")
    for dataset in args.datasets:
        for ipc in args.ipcs:
            cells = {m: [a for s in range(args.seeds) for a in run_cell(m, dataset, ipc, s, args, protocol).accuracies]
                     for m in ("random", "dm")}
            pooled = {m: EvalResult(tuple(a)) for m, a in cells.items()}
            gain = 100 * (pooled["dm"].mean - pooled["random"].mean)
            print(f"| {dataset} | {ipc} | {pooled['random']} | {pooled['dm']} | {gain:+.2f} |", flush=True)


if __name__ == "__main__":
    main()
