"""Sweeps: distill and evaluate over a grid of settings, one disk-cached cell per full configuration.

A cell is (distillation config or random-subset baseline, evaluation protocol, where it is tested). Its accuracies
are cached under a hash of all of that, so re-running a notebook or a benchmark, or widening a grid, only computes
the cells that are new. Hyper-parameters are chosen with ``validation=k``: the cell then trains on the training set
minus k images per class and tests on those k, never on the real test set.

Under torchrun the cells not yet in the cache are dealt over the ranks; each rank computes its cells alone into the
shared cache (its folder must be shared by all nodes for "never rerun" to hold across nodes and jobs).
"""
from __future__ import annotations

import itertools
import sys
import time
from dataclasses import asdict, dataclass, replace

from . import distributed
from .cache import DiskCache
from .data import RealData, load_dataset
from .distill import DistillConfig, distill
from .evaluate import EvalProtocol, EvalResult, evaluate, random_subset
from .train import resolve_device

METHODS = ("distill", "random")


@dataclass(frozen=True)
class Cell:
    """One measurement: ``method`` 'distill' runs ``config``; 'random' is the random subset of ``config.ipc``."""

    config: DistillConfig
    protocol: EvalProtocol
    method: str = "distill"
    validation: int = 0  # >0: hold out this many training images per class and test on them

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; use one of {METHODS}")
        if self.validation < 0:
            raise ValueError(f"validation must be >= 0, got {self.validation}")

    def key(self) -> dict:
        config = self.config.identity()  # resolved method defaults; DM keys unchanged by IDM's fields
        if self.method == "random":  # only these fields define a random subset
            config = {k: config[k] for k in ("dataset", "ipc", "seed")}
        protocol = asdict(self.protocol)
        del protocol["compile"]  # changes float rounding only, not the measurement (and keeps older cells valid)
        return {"method": self.method, "config": config, "eval": protocol, "validation": self.validation}


def cell_data(cell: Cell, root=None) -> RealData:
    data = load_dataset(cell.config.dataset, root)
    return data.validation_split(cell.validation) if cell.validation else data


def run_cell(cell: Cell, root=None, cache: DiskCache | None = None, verbose: bool = True) -> EvalResult:
    """The accuracies of one cell, from the cache when it was measured before."""
    cache = cache or DiskCache("sweep")

    def compute() -> dict:
        data = cell_data(cell, root)
        start = time.perf_counter()
        syn = (random_subset(data, cell.config.ipc, cell.config.seed) if cell.method == "random"
               else distill(cell.config, data, progress=False))
        made = time.perf_counter() - start
        result = evaluate(syn, data, cell.protocol)
        if verbose:
            print(f"  [cell] {describe(cell)}: {result} (make {made:.0f} s, evaluate "
                  f"{time.perf_counter() - start - made:.0f} s)", file=sys.stderr, flush=True)
        return {"accuracies": list(result.accuracies), "history": syn.history}

    value = cache.get_or_compute(cell.key(), compute)
    return EvalResult(tuple(value["accuracies"]), asdict(cell.protocol))


def describe(cell: Cell) -> str:
    c = cell.config
    what = "random" if cell.method == "random" else f"{c.label()} {c.iterations} it"
    where = f"val{cell.validation}" if cell.validation else "test"
    return f"{c.dataset} ipc{c.ipc} {what} seed{c.seed} ({where})"


def grid(base: DistillConfig, **axes) -> list[DistillConfig]:
    """Every combination of the given config fields, e.g. ``grid(base, lambda_cc=[0.01, 0.1], seed=[0, 1])``."""
    names = list(axes)
    return [replace(base, **dict(zip(names, values))) for values in itertools.product(*(axes[n] for n in names))]


def sweep(configs: list[DistillConfig], protocol: EvalProtocol, validation: int = 0, root=None,
          verbose: bool = True) -> list[dict]:
    """Run (or fetch) a cell per config; a tidy record per cell with its settings and mean/std accuracy.

    Under torchrun rank 0 reads the cached cells, the others are computed one per rank (round-robin, each by one
    process), and every rank returns all records in config order.
    """
    cells = [Cell(config, protocol, validation=validation) for config in configs]
    distributed.setup(resolve_device(protocol.device))
    cache = DiskCache("sweep")

    def cached() -> dict[int, EvalResult]:
        values = {i: cache.get(cell.key()) for i, cell in enumerate(cells)}
        return {i: EvalResult(tuple(v["accuracies"]), asdict(protocol)) for i, v in values.items() if v is not None}

    results = distributed.spread(len(cells), lambda i: run_cell(cells[i], root, cache, verbose),
                                 skip=distributed.from_main(cached))
    return [{**asdict(config.resolved()), "validation": validation, "accuracies": result.accuracies, "mean": result.mean,
             "std": result.std} for config, result in zip(configs, results)]


def pooled(results: list[EvalResult]) -> EvalResult:
    """Mean ± std over every model of several cells (e.g. several distillation seeds)."""
    return EvalResult(tuple(a for r in results for a in r.accuracies), results[0].protocol if results else {})
