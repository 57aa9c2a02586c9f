"""Sweeps: distill and evaluate over a grid of settings, one disk-cached cell per full configuration.

A cell is (distillation config or random-subset baseline, evaluation protocol, where it is tested). Its accuracies
are cached under a hash of all of that, so re-running a notebook or a benchmark, or widening a grid, only computes
the cells that are new. Hyper-parameters are chosen with ``validation=k``: the cell then trains on the training set
minus k images per class and tests on those k, never on the real test set.

Under torchrun the cells not yet in the cache are dealt over the ranks; each rank computes its cells alone into the
shared cache (its folder must be shared by all nodes for "never rerun" to hold across nodes and jobs).

The synthetic set of a cell is cached too (as the distiller's state, in the "synthetic" namespace, keyed without the
evaluation protocol), so analysing a set, evaluating it under another protocol, or distilling the same config for
more iterations (:func:`synthetic_sets`, which resumes from the longest shorter cached run) never repeats
finished work.
"""
from __future__ import annotations

import itertools
import sys
import time
from dataclasses import asdict, dataclass, replace

from . import distributed, seeding
from .analysis import set_metrics
from .cache import DiskCache
from .data import RealData, load_dataset
from .distill import DistillConfig, Distiller
from .evaluate import EvalProtocol, EvalResult, evaluate, random_subset
from .featnet import FeatNetPool, FeatNetSpec, pretrain
from .options import RunOptions
from .synthetic import SyntheticSet
from .train import machine, resolve_device

METHODS = ("distill", "random", "init")
# A distillation in a cell also caches its state every this many iterations: each is exactly the set of a shorter run,
# so an interrupted cell (or a longer one later) resumes from the last of them instead of from the start.
SNAPSHOT_EVERY = 100


@dataclass(frozen=True)
class Cell:
    """One measurement: ``method`` 'distill' runs ``config``; 'random' is the random subset of ``config.ipc``;
    'init' is the set ``config``'s distillation starts from (0 iterations), which separates "which real images were
    drawn" from "what distillation changed" when a distilled set is compared with a random subset. ``options``: how
    its set is distilled (device, compile, ...); not part of its key, as it does not change the result."""

    config: DistillConfig
    protocol: EvalProtocol
    method: str = "distill"
    validation: int = 0  # >0: hold out this many training images per class and test on them
    options: RunOptions = RunOptions()

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; use one of {METHODS}")
        if self.validation < 0:
            raise ValueError(f"validation must be >= 0, got {self.validation}")

    def key(self) -> dict:
        config = self.config.identity()  # resolved method defaults; DM keys unchanged by IDM's fields
        if self.method == "random":  # only these fields define a random subset
            config = {k: config[k] for k in ("dataset", "ipc", "seed")}
        elif self.method == "init":  # ... and these the starting set (IDM's factor decides its tiles)
            config = {k: config[k] for k in ("dataset", "ipc", "seed", "init")} | {
                "factor": self.config.resolved().factor}
        protocol = asdict(self.protocol)
        del protocol["compile"]  # changes float rounding only, not the measurement (and keeps older cells valid)
        return {"method": self.method, "config": config, "eval": protocol, "validation": self.validation}


def cell_data(cell: Cell, root=None) -> RealData:
    data = load_dataset(cell.config.dataset, root)
    return data.validation_split(cell.validation) if cell.validation else data


def _lineage(cell: Cell) -> dict:
    """Cache key of the list of iteration counts cached for the cell's run (its identity less ``iterations``)."""
    identity = cell.config.identity()
    del identity["iterations"]
    return {"lineage": identity, "validation": cell.validation}


def synthetic_sets(cell: Cell, iterations: list[int], root=None,
                   cache: DiskCache | None = None) -> dict[int, SyntheticSet]:
    """The cell's distilled set after each number of ``iterations``, from one run, each cached on disk.

    Each checkpoint is the cell with ``config.iterations = n``; a missing one is distilled by resuming the state of the
    previous (shorter) checkpoint, which gives exactly the result of an uninterrupted run of n iterations. The first
    missing one resumes from the longest shorter checkpoint cached by any earlier call (a per-run list of cached
    counts, kept next to the sets), so raising a benchmark's iterations continues its finished runs.
    """
    if cell.method != "distill":
        raise ValueError(f"only 'distill' cells have distillation checkpoints, not {cell.method!r}")
    if not iterations or min(iterations) < 1:
        raise ValueError(f"iterations must be a non-empty list of numbers >= 1, got {iterations}")
    cache = cache or DiskCache("synthetic")
    full = load_dataset(cell.config.dataset, root)  # mean, std and class names of the sets
    lineage = set(cache.get(_lineage(cell)) or [])

    def key(n: int) -> dict:
        return {"config": replace(cell.config, iterations=n).identity(), "validation": cell.validation}

    def listed(n: int) -> None:
        """Record that the set after n iterations is cached (the run's lineage)."""
        if n not in lineage:
            lineage.add(n)
            cache.put(_lineage(cell), sorted(lineage))

    def longest_cached_shorter(n: int) -> dict | None:
        shorter = sorted((m for m in lineage if m < n), reverse=True)
        return next((state for state in map(cache.get, map(key, shorter)) if state is not None), None)

    data, state, sets = None, None, {}  # the cell's data is split only when something has to be distilled
    for n in sorted(set(iterations)):
        config = replace(cell.config, iterations=n)

        def compute(config=config, previous=state) -> dict:
            nonlocal data
            if data is None:
                data = cell_data(cell, root)
            run = Distiller(config, data, cell.options, progress=False)
            previous = previous or longest_cached_shorter(config.iterations)
            if previous is not None:
                run.load_state_dict(previous)
            while run.iteration < config.iterations:
                run.step()
                if run.iteration % SNAPSHOT_EVERY == 0 and run.iteration < config.iterations:
                    cache.put(key(run.iteration), state_of(run))  # a shorter run's exact result: resumable
                    listed(run.iteration)
            return state_of(run)

        state = cache.get_or_compute(key(n), compute)
        listed(n)
        sets[n] = SyntheticSet(state["images"], state["labels"], full.mean, full.std, list(full.classes),
                               state["config"], state["history"], state["factor"])
    return sets


def state_of(run: Distiller) -> dict:
    """What the set cache keeps of a run: its resumable state, labels and partition factor."""
    return {**run.state_dict(), "labels": run.labels(), "factor": run.factor}


def synthetic_set(cell: Cell, root=None, cache: DiskCache | None = None) -> SyntheticSet:
    """The set a cell evaluates: its distilled set (cached, see :func:`synthetic_sets`) or its random subset."""
    if cell.method == "random":
        return random_subset(cell_data(cell, root), cell.config.ipc, cell.config.seed)
    if cell.method == "init":  # no CC/CM: their feature nets do not change the starting images
        return Distiller(replace(cell.config, cc=False, cm=False), cell_data(cell, root), cell.options,
                         progress=False).result()
    return synthetic_sets(cell, [cell.config.iterations], root, cache)[cell.config.iterations]


def run_cell(cell: Cell, root=None, cache: DiskCache | None = None, verbose: bool = True) -> EvalResult:
    """The accuracies of one cell, from the cache when it was measured before (its set from the set cache)."""
    cache = cache or DiskCache("sweep")

    def compute() -> dict:
        data = cell_data(cell, root)
        start = time.perf_counter()
        syn = synthetic_set(cell, root, DiskCache("synthetic", cache.dir.parent))
        made = time.perf_counter() - start
        result = evaluate(syn, data, cell.protocol)
        evaluated = time.perf_counter() - start - made
        if verbose:
            print(f"  [cell] {describe(cell)}: {result} (make {made:.0f} s, evaluate {evaluated:.0f} s)",
                  file=sys.stderr, flush=True)
        where = machine(distributed.rank_device(resolve_device(cell.options.device)))
        return {"accuracies": list(result.accuracies), "history": syn.history, "evaluate_seconds": evaluated,
                "machine": where}

    value = cache.get_or_compute(cell.key(), compute)
    return EvalResult(tuple(value["accuracies"]), asdict(cell.protocol))


def cell_metrics(cell: Cell, root=None, real_per_class: int = 50) -> dict[str, float]:
    """Class-discrimination metrics (:func:`analysis.set_metrics`) of the cell's set in the embedding of its config's
    CC feature net, pretrained on the cell's data (so a validation cell never sees the test set), with
    ``real_per_class`` of the cell's held-out images per class as k-NN queries. Cached on disk like the cells (a
    benchmark's tables recompute dozens of them, each reloading its data and feature net)."""
    def compute() -> dict[str, float]:
        data = cell_data(cell, root)
        net, _ = pretrain(data, cell.config.featnet_spec())
        return set_metrics(synthetic_set(cell, root), data, net, real_per_class,
                           seeding.generator(cell.config.seed, seeding.ANALYSIS_REAL))

    the_set = {k: v for k, v in cell.key().items() if k != "eval"}  # the evaluation protocol does not enter
    key = {"set": the_set, "featnet": cell.config.featnet_spec().identity(), "real_per_class": real_per_class}
    return DiskCache("metrics").get_or_compute(key, compute)


def describe(cell: Cell) -> str:
    c = cell.config
    extra = f" (CC paper form, beta {c.cc_beta:g})" if c.cc and c.cc_form == "paper" else ""
    if c.uses_featnets and c.featnet_recipe != "default":
        extra += f" (feature nets {c.featnet_recipe} {c.featnet_epochs} ep x {c.featnet_pool})"
    ours = c.resolved()
    own = replace(c, factor=None, lr_img=None, ce_weight=DistillConfig.ce_weight, lambda_cc=None,
                  lambda_cm=None).resolved()
    weights = [name for name, on in (("lambda_cc", c.cc), ("lambda_cm", c.cm)) if on]  # an unused weight says nothing
    extra += "".join(f" ({name} {getattr(ours, name):g})" for name in ("factor", "lr_img", "ce_weight", *weights)
                     if getattr(ours, name) != getattr(own, name))  # a departure from the method's own setting
    extra += f" (lr half-life {c.lr_half_life})" if c.lr_half_life else ""
    extra += "".join(f" ({name} {getattr(c, name)})" for name in ("batch_real", "init")
                     if getattr(c, name) != getattr(DistillConfig, name))  # time_to_accuracy's other levers
    what = {"random": "random", "init": f"{c.label()} initialisation"}.get(cell.method,
                                                                             f"{c.label()}{extra} {c.iterations} it")
    where = f"val{cell.validation}" if cell.validation else "test"
    return f"{c.dataset} ipc{c.ipc} {what} seed{c.seed} ({where})"


def grid(base: DistillConfig, **axes) -> list[DistillConfig]:
    """Every combination of the given config fields, e.g. ``grid(base, lambda_cc=[0.01, 0.1], seed=[0, 1])``."""
    names = list(axes)
    return [replace(base, **dict(zip(names, values))) for values in itertools.product(*(axes[n] for n in names))]


def run_cells(cells: list[Cell], root=None, verbose: bool = True) -> list[EvalResult]:
    """The accuracies of every cell (any method, protocol or split), in order; cached cells are read, not rerun.

    Under torchrun rank 0 reads the cached cells, the others are computed one per rank (round-robin, each by one
    process), and every rank returns all results. The CC feature nets the uncached cells need are pretrained first,
    each by one rank (:func:`featnets_needed`), so two ranks never train the same net at once.
    """
    if not cells:
        return []
    distributed.setup(resolve_device(cells[0].protocol.device))
    cache = DiskCache("sweep")

    def cached() -> dict[int, EvalResult]:
        values = {i: cache.get(cell.key()) for i, cell in enumerate(cells)}
        return {i: EvalResult(tuple(v["accuracies"]), asdict(cells[i].protocol))
                for i, v in values.items() if v is not None}

    done = distributed.from_main(cached)
    pretrain_featnets([cell for i, cell in enumerate(cells) if i not in done], root)
    return distributed.spread(len(cells), lambda i: run_cell(cells[i], root, cache, verbose), skip=done)


def sweep(configs: list[DistillConfig], protocol: EvalProtocol, validation: int = 0, root=None,
          verbose: bool = True) -> list[dict]:
    """Run (or fetch) a distillation cell per config (:func:`run_cells`); a tidy record per cell with its settings
    and mean/std accuracy, in config order."""
    results = run_cells([Cell(config, protocol, validation=validation) for config in configs], root, verbose)
    return [{**asdict(config.resolved()), "validation": validation, "accuracies": result.accuracies, "mean": result.mean,
             "std": result.std} for config, result in zip(configs, results)]


def pretrain_featnets(cells: list[Cell], root=None) -> None:
    """Pretrain (or find cached) every CC feature net the cells need (:func:`featnets_needed`), each by one rank."""
    needed = featnets_needed(cells)
    distributed.spread(len(needed), lambda i: pretrain(cell_data(needed[i][0], root), needed[i][1])[1])


def featnets_needed(cells: list[Cell]) -> list[tuple[Cell, FeatNetSpec]]:
    """Each distinct pretrained feature net (CC's, or DM's with match_net "featnet") the cells will pretrain, once,
    with a cell whose data it trains on: one per (data set, validation split, spec), a pool asking for each of its
    members (:meth:`FeatNetPool.specs`)."""
    needed = {}
    for cell in cells:
        config = cell.config
        if cell.method != "distill" or not config.uses_featnets:
            continue
        for spec in FeatNetPool.specs(config.featnet_spec(), config.featnet_pool):
            needed.setdefault((config.dataset, cell.validation, spec), (cell, spec))
    return list(needed.values())


def choose(candidate_sets: list[dict], protocol: EvalProtocol, validation: int,
           root=None) -> list[tuple[object, dict]]:
    """For each {value: DistillConfig} of ``candidate_sets``, the value whose set scores best on ``validation``
    held-out training images per class (never the test set) and every candidate's validation result. All candidates
    of all sets are one :func:`run_cells` call, so under torchrun they are spread over the ranks together."""
    if validation <= 0:
        raise ValueError(f"choosing needs a validation split (validation > 0), got {validation}")
    if any(not candidates for candidates in candidate_sets):
        raise ValueError("every candidate set needs at least one candidate")
    scored = iter(run_cells([Cell(config, protocol, validation=validation)
                             for candidates in candidate_sets for config in candidates.values()], root))
    results = [{value: next(scored) for value in candidates} for candidates in candidate_sets]
    return [(max(r, key=lambda value: r[value].mean), r) for r in results]


def pooled(results: list[EvalResult]) -> EvalResult:
    """Mean ± std over every model of several cells (e.g. several distillation seeds)."""
    return EvalResult(tuple(a for r in results for a in r.accuracies), results[0].protocol if results else {})
