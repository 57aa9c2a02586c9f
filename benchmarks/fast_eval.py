"""A fast evaluation protocol for sweeps and validation cells, checked against the papers' 1000-epoch protocol.

    python benchmarks/fast_eval.py                 # Fashion-MNIST and CIFAR-10, IPC 1 and 10, four methods, 2 seeds
    python benchmarks/fast_eval.py --candidate "e300:epochs=300" --candidate "e100-lr0.03:epochs=100,lr=0.03"
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 benchmarks/fast_eval.py --threads 1   # cells over 2 processes

The sets: every (data set, IPC, method, seed) of the grid, each a sweep cell (distilled at ``--iterations``, cached): a
random real subset, DM, DM+CM (IPC > 1: at IPC 1 CM is inert and the set is DM's) and IDM. Each set is evaluated by the
reference protocol (``--eval-epochs``, default 1000: the papers') and by every candidate (``NAME:field=value,...`` over
the reference's EvalProtocol fields), ``--models`` nets each with the same seeds. A candidate is good for choosing when
it ranks the sets as the reference does: per candidate, Spearman's rank correlation of the sets' mean accuracies with
the reference's, over all sets and within each (data set, IPC) (what a sweep compares), the mean offset (candidate -
reference) with its spread and the largest one, and its evaluation seconds per net against the reference's (each cell
records how long its evaluation took). With ``--models`` >= 2 the reference's own noise is shown too: the rank
correlation of its first net's accuracies with its second's.
"""
from __future__ import annotations

import statistics
from dataclasses import replace

from scipy.stats import spearmanr

from common import named_fields, parser, say, setup, write_results
from distill_lib import DistillConfig, EvalProtocol, distributed
from distill_lib.cache import DiskCache
from distill_lib.sweep import Cell, run_cells
from distill_lib.train import resolve_device

METHODS = {"random": None, "DM": {}, "DM+CM": {"cm": True}, "IDM": {"method": "idm"}}
DEFAULT_CANDIDATES = ["e300:epochs=300", "e100:epochs=100"]


def grid_cells(args, protocol: EvalProtocol) -> list[tuple[str, Cell]]:
    """(method name, cell) of every set of the grid, under ``protocol``."""
    cells = []
    for dataset in args.datasets:
        for ipc in args.ipcs:
            for name in args.methods:
                if name == "DM+CM" and ipc == 1:
                    continue  # one sample per class: CM has no gradient, the set is DM's
                for seed in range(args.seeds):
                    config = DistillConfig(dataset=dataset, ipc=ipc, iterations=args.iterations,
                                           batch_real=args.batch_real, seed=seed, **(METHODS[name] or {}))
                    cells.append((name, Cell(config, protocol, method="random" if METHODS[name] is None else
                                             "distill")))
    return cells


def seconds_per_net(cells: list[Cell]) -> float | None:
    """Mean evaluation seconds per net over the cells that recorded them (None if none did)."""
    cache = DiskCache("sweep")
    times = [value["evaluate_seconds"] / len(value["accuracies"])
             for value in map(cache.get, (cell.key() for cell in cells)) if value and "evaluate_seconds" in value]
    return statistics.fmean(times) if times else None


def rank_correlation(a: list[float], b: list[float]) -> float:
    return float(spearmanr(a, b).statistic) if len(a) > 2 else float("nan")


def main() -> None:
    p = parser(__doc__, datasets=["fashion_mnist", "cifar10"], ipcs=[1, 10], seeds=2)
    p.set_defaults(eval_epochs=1000, models=1)
    p.add_argument("--methods", nargs="+", choices=tuple(METHODS), default=list(METHODS))
    p.add_argument("--candidate", action="append", dest="candidates", metavar="NAME:field=value,...",
                   help=f"a protocol to check (repeat; default: {' '.join(DEFAULT_CANDIDATES)})")
    args = p.parse_args()
    setup(args)
    reference = EvalProtocol(epochs=args.eval_epochs, num_models=args.models)
    candidates = {name: replace(reference, **fields) for name, fields in
                  (named_fields(text, EvalProtocol, reserved=("num_models", "seed", "device"))
                   for text in (args.candidates or DEFAULT_CANDIDATES))}
    distributed.setup(resolve_device(reference.device))
    budget = (f"Budget: sets distilled {args.iterations} iterations (batch_real {args.batch_real}, each method's "
              f"lr_img), {args.seeds} seed(s) per (data set, IPC, method); reference protocol {reference.describe()}; "
              "candidates: " + "; ".join(f"{n} ({c.describe()})" for n, c in candidates.items()) + ".")
    say(budget + "\n", flush=True)

    protocols = {"reference": reference, **candidates}
    sets = grid_cells(args, reference)
    every = [replace(cell, protocol=proto) for proto in protocols.values() for _, cell in sets]
    results = iter(run_cells(every))
    measured = {name: [next(results) for _ in sets] for name in protocols}
    if not distributed.is_main():
        return

    say("| data set | IPC | method | seed | " + " | ".join(protocols) + " |")
    say("|---|---|---|---|" + "---|" * len(protocols))
    for k, (method, cell) in enumerate(sets):
        c = cell.config
        say(f"| {c.dataset} | {c.ipc} | {method} | {c.seed} | " +
            " | ".join(str(measured[name][k]) for name in protocols) + " |")

    groups = sorted({(cell.config.dataset, cell.config.ipc) for _, cell in sets})
    ref = [r.mean for r in measured["reference"]]
    ref_seconds = seconds_per_net([cell for _, cell in sets])
    say("\n## Agreement with the reference protocol\n")
    say("| protocol | Spearman, all sets | Spearman within (data set, IPC), mean (min) | offset, mean ± std "
        "(points) | largest offset | s / net | x the reference's |")
    say("|---|---|---|---|---|---|---|")
    for name, proto in protocols.items():
        got = [r.mean for r in measured[name]]
        within = [rank_correlation([ref[k] for k, (_, c) in enumerate(sets) if (c.config.dataset, c.config.ipc) == g],
                                   [got[k] for k, (_, c) in enumerate(sets) if (c.config.dataset, c.config.ipc) == g])
                  for g in groups]
        offsets = [100 * (g - r) for g, r in zip(got, ref)]
        seconds = seconds_per_net([replace(cell, protocol=proto) for _, cell in sets])
        say(f"| {name} | {rank_correlation(ref, got):.3f} | {statistics.fmean(within):.3f} ({min(within):.3f}) | "
            f"{statistics.fmean(offsets):+.2f} ± {statistics.pstdev(offsets):.2f} | "
            f"{max(offsets, key=abs):+.2f} | " + (f"{seconds:.1f}" if seconds else "-") + " | " +
            (f"{seconds / ref_seconds:.2f}" if seconds and ref_seconds else "-") + " |")
    if args.models >= 2:
        first, second = ([r.accuracies[i] for r in measured["reference"]] for i in (0, 1))
        say(f"\nThe reference's own noise: its first net against its second, Spearman over all sets "
            f"{rank_correlation(first, second):.3f}.")
    write_results("fast_eval", args, budget)


if __name__ == "__main__":
    main()
