"""Time to accuracy: test accuracy (papers' protocol) against seconds of distillation, per distillation setting.

    python benchmarks/time_to_accuracy.py                       # CIFAR-10 IPC 10, the default settings below
    python benchmarks/time_to_accuracy.py --setting "b64-decay:batch_real=64,lr_img=4,lr_half_life=200" \\
        --snapshots 50 100 200 400 600 --target 48.9

A setting is ``NAME:field=value,...`` (DistillConfig fields over DM as the authors run it, ``authors``: batch_real
``--batch-real`` (256), lr_img 1, constant). Each setting is one run, read at ``--snapshots`` iteration counts: the
sweep caches each count's set and resumes a longer run from the shorter one, so a curve costs one run and an evaluation
per point.

Seconds: each setting's seconds per iteration are timed in one process (under torchrun rank 0, the others waiting;
``--time-iterations`` iterations on random images of the data set's shape, settings and the plain per-class
reference loop interleaved, as benchmarks/speed.py times them; median), and so are the seconds to build its starting
images from the real data (a warm start such as ``init=herding`` costs some), so every curve's time axis comes from
one run on one machine, whenever its cells were computed: a point at n iterations sits at start + n x that median.
The reference loop (``distill_lib.reference``, the shape of the authors' code) computes the authors' setting's
maths, so its curve is the authors' accuracies at the reference's seconds.

Stage 1 (validation): every setting's curve, at the snapshots it reaches within ``--budget`` seconds, on
``--validation`` held-out training images per class (``--val-models`` evaluation nets, ``--val-epochs`` epochs); the
setting with the best validation accuracy is chosen. Stage 2 (test): the authors' setting and the chosen one (``--test
all``: every setting) at every snapshot, ``--models`` nets of ``--eval-epochs`` epochs. Tables: the curves, and each
setting's time to ``--target`` percent (the first snapshot at or above it). The figure (``--figure``) draws the test
curves against seconds.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from dataclasses import replace
from pathlib import Path

from common import REPO, named_fields, parser, say, setup, validation_flags, validation_protocol, write_results
from distill_lib import DistillConfig, EvalProtocol, distributed
from distill_lib.data import load_dataset
from distill_lib.distill import Distiller
from distill_lib.options import RunOptions
from distill_lib.sweep import Cell, run_cells, synthetic_sets
from distill_lib.train import resolve_device
from speed import random_data, time_distill

AUTHORS = "authors"
DEFAULT_SETTINGS = [AUTHORS, "b128:batch_real=128", "b64:batch_real=64",
                    "b64-lr4-decay:batch_real=64,lr_img=4,lr_half_life=200"]


def parse_setting(text: str) -> tuple[str, dict]:
    """``NAME:field=value,...`` as (name, typed DistillConfig fields) (common.named_fields)."""
    return named_fields(text, DistillConfig, reserved=("dataset", "ipc", "iterations", "seed"))


@dataclass(frozen=True)
class Pace:
    """Where a setting's time goes: seconds before the first iteration (building the starting images) and per
    iteration. A snapshot after n iterations is reached at ``at(n)`` seconds."""
    start: float
    per_iteration: float

    def at(self, n: int) -> float:
        return self.start + n * self.per_iteration


def paces(configs: dict[str, DistillConfig], reps: int) -> tuple[dict[str, Pace], Pace]:
    """Each config's pace (library) and the reference loop's on the authors' config. Per iteration: the median over
    ``reps`` iterations timed here on random images of the data set's shape, each interleaved with the reference
    (speed.time_distill). Start: the seconds to build the run's starting images from the real training set."""
    data = random_data(configs[AUTHORS].dataset, max(c.batch_real for c in configs.values()) + 10, 10)
    real = load_dataset(configs[AUTHORS].dataset)
    library, reference = {}, None
    for name, config in configs.items():
        lib, ref, _, _ = time_distill(config, data, reps)
        start = time.perf_counter()
        Distiller(replace(config, cc=False, match_net="random"), real, RunOptions(device="cpu"), progress=False)
        library[name] = Pace(time.perf_counter() - start, statistics.median(lib))
        if name == AUTHORS:
            reference = Pace(library[name].start, statistics.median(ref))
    return library, reference


def within(budget: float, snapshots: list[int], pace: Pace) -> list[int]:
    """The snapshots a setting reaches within ``budget`` seconds: the only ones stage 1 evaluates, since a later one
    cannot make the setting the choice."""
    return [n for n in snapshots if pace.at(n) <= budget]


def curve_rows(name: str, snapshots: list[int], pace: Pace, results) -> list[str]:
    return [f"| {name} | {n} | {pace.at(n):.0f} | {r} |" for n, r in zip(snapshots, results)]


def time_to(target: float, snapshots: list[int], pace: Pace, results) -> tuple[float | None, str]:
    """Seconds at the first snapshot whose mean accuracy reaches ``target`` percent (None if none does), in words."""
    for n, r in zip(snapshots, results):
        if 100 * r.mean >= target:
            return pace.at(n), f"{pace.at(n):.0f} s ({n} iterations)"
    best_n, best = max(zip(snapshots, results), key=lambda t: t[1].mean)
    return None, f"not reached (best {100 * best.mean:.2f} % at {pace.at(best_n):.0f} s)"


def plot(curves: dict[str, tuple[list[float], list[float]]], target: float, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
    for name, (seconds, accuracies) in curves.items():
        ax.plot(seconds, accuracies, marker="o", ls="--" if "reference" in name else "-", label=name)
    ax.axhline(target, color="grey", lw=0.8, ls=":", label=f"{target:g} %")
    ax.set_xlabel("seconds of distillation (this machine's seconds per iteration x iterations)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    p = parser(__doc__, datasets=["cifar10"], ipcs=[10], seeds=1)
    p.set_defaults(batch_real=256)  # the authors' setting: --batch-real is its real batch
    p.add_argument("--setting", action="append", dest="settings", metavar="NAME:field=value,...",
                   help=f"a distillation setting (repeat; default: {' '.join(DEFAULT_SETTINGS)})")
    p.add_argument("--snapshots", nargs="+", type=int, default=[50, 100, 200, 400, 600], help="iteration counts")
    p.add_argument("--target", type=float, default=48.9, help="test accuracy (%%) to reach")
    p.add_argument("--budget", type=float, default=480, help="seconds within which stage 1 compares the settings")
    p.add_argument("--test", choices=("chosen", "all"), default="chosen", help="settings in the test stage")
    p.add_argument("--time-iterations", type=int, default=5, help="timed iterations per setting")
    p.add_argument("--figure", default=str(REPO / "figures" / "time_to_accuracy.png"), help="'' for none")
    validation_flags(p)
    args = p.parse_args()
    setup(args)
    settings = dict(parse_setting(text) for text in (args.settings or DEFAULT_SETTINGS))
    if AUTHORS not in settings:
        settings = {AUTHORS: {}, **settings}
    [dataset], [ipc], snapshots = args.datasets, args.ipcs, sorted(args.snapshots)
    base = DistillConfig(dataset=dataset, ipc=ipc, iterations=snapshots[-1], batch_real=args.batch_real)
    configs = {name: replace(base, **fields) for name, fields in settings.items()}
    protocol = EvalProtocol(epochs=args.eval_epochs, num_models=args.models)
    val_protocol = validation_protocol(args, protocol)
    distributed.setup(resolve_device(protocol.device))
    authors = f"batch_real {args.batch_real}, lr_img 1"
    budget = (f"Budget: {dataset} IPC {ipc}, snapshots at {snapshots} iterations, seed 0; settings: " +
              "; ".join(f"{n} ({', '.join(f'{k} {v}' for k, v in f.items()) or authors})"
                        for n, f in settings.items()) +
              f"; chosen on {args.validation} validation images per class by accuracy within {args.budget:g} s "
              f"(evaluation {val_protocol.describe()}); test evaluation {protocol.describe()}.")
    say(budget + "\n", flush=True)

    # timed on rank 0 alone while the others wait, and sent to them: every rank must pick the same snapshots
    pace, reference = distributed.from_main(lambda: paces(configs, args.time_iterations))
    say("| setting | s to start | s / iteration | x the reference loop |")
    say("|---|---|---|---|")
    say(f"| reference loop ({AUTHORS}) | {reference.start:.1f} | {reference.per_iteration:.3f} | 1.00 |")
    for name, p in pace.items():
        say(f"| {name} | {p.start:.1f} | {p.per_iteration:.3f} | {p.per_iteration / reference.per_iteration:.2f} |",
            flush=True)

    def curves(points: dict[str, list[int]], proto: EvalProtocol, validation: int) -> dict[str, list]:
        # each setting's snapshots distilled as one run by one rank first (the evaluations are then spread cell by
        # cell): dealt cell by cell, two ranks would distil the same run's first iterations at once
        runs = [(Cell(configs[n], proto, validation=validation), ks) for n, ks in points.items() if ks]
        distributed.spread(len(runs), lambda i: len(synthetic_sets(*runs[i])))
        cells = [Cell(replace(configs[n], iterations=k), proto, validation=validation) for n, ks in points.items()
                 for k in ks]
        results = iter(run_cells(cells))
        return {n: [next(results) for _ in ks] for n, ks in points.items()}

    val_points = {n: within(args.budget, snapshots, pace[n]) for n in configs}
    val = curves(val_points, val_protocol, args.validation)
    chosen = max(configs, key=lambda n: max((r.mean for r in val[n]), default=0.0))
    say(f"\n## Validation ({args.validation} images per class; the snapshots within {args.budget:g} s)\n")
    say("| setting | iterations | seconds | validation accuracy |")
    say("|---|---|---|---|")
    for name in configs:
        say("\n".join(curve_rows(name, val_points[name], pace[name], val[name])))
    say(f"\nChosen on validation (best within {args.budget:g} s): {chosen}")

    tested = list(configs) if args.test == "all" else list(dict.fromkeys([AUTHORS, chosen]))
    test = curves({n: snapshots for n in tested}, protocol, 0)
    say("\n## Test\n")
    say("| setting | iterations | seconds | test accuracy |")
    say("|---|---|---|---|")
    for name in tested:
        say("\n".join(curve_rows(name, snapshots, pace[name], test[name])))
    rows = {f"reference loop ({AUTHORS})": (reference, test[AUTHORS])} | {n: (pace[n], test[n]) for n in tested}
    say("\n".join(curve_rows(f"reference loop ({AUTHORS})", snapshots, reference, test[AUTHORS])))
    say(f"\n## Time to {args.target:g} %\n")
    say("| setting | time to target | x the reference loop's |")
    say("|---|---|---|")
    ref_seconds, _ = time_to(args.target, snapshots, reference, test[AUTHORS])
    for name, (p, results) in rows.items():
        reached, words = time_to(args.target, snapshots, p, results)
        ratio = f"{reached / ref_seconds:.2f}" if reached is not None and ref_seconds is not None else "-"
        say(f"| {name} | {words} | {ratio} |")
    path = write_results("time_to_accuracy", args, budget)
    if args.figure and path is not None:
        lines = {name: ([p.at(k) for k in snapshots], [100 * r.mean for r in results])
                 for name, (p, results) in rows.items()}
        plot(lines, args.target, Path(args.figure), f"{dataset} IPC {ipc}: {protocol.describe()}")
        say(f"Figure: {args.figure}")


if __name__ == "__main__":
    main()
