"""What class centralization's gain depends on: DM, +CC, +CM, +CC+CM and the control, per feature-net strength.

    python benchmarks/cc_gain.py --featnets default:2:1 convnet:6:1 convnet:6:4      # CIFAR-10 IPC 10
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 benchmarks/cc_gain.py --threads 1 ...   # cells over 2 processes

CC pulls each class's synthetic images towards their mean in a *pretrained* feature net. Each ``--featnets`` entry
``RECIPE:EPOCHS:POOL`` is one feature-net setting (distill_lib.featnet.RECIPES; ``default`` is the ResNet18 on
``--featnet-per-class`` images per class): a row of the table with the mean test accuracy of the nets its cells
draw (stored with each net) and, at the same budget, DM (its random nets; the same in every row), DM(featnet) (DM's mean matching done in
the drawn feature net instead, without CC: the control, whose gain is a trained embedding's, not centralization's),
+CC, +CM (no feature net; the same in every row) and +CC+CM. Gains are in points over DM, mean over seeds x
evaluation nets. ``--lambda-cc`` with several values chooses lambda_CC per row on ``--validation`` held-out training
images per class (CC alone on DM, as ablation.py chooses it; the feature nets of those cells are trained without
the held-out images); with one value it is used as given. Every cell is cached (distill_lib.sweep), so the table
grows over several runs; a row too long to measure with the others at once is a run of its own, kept beside
them with ``--results-tag`` (results/cc_gain.<TAG>.json). The figure (``--figure``) plots CC's gain and the control's
against the feature net's accuracy, with the pool size as the marker, for the rows of every run in the results folder
at this run's budget (distill_lib.course.plot_cc_gain and cc_gain_runs, which notebook 04 also uses).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from common import REPO, parser, say, setup, validation_flags, validation_protocol, write_results
from distill_lib import DistillConfig, EvalProtocol, course, distributed
from distill_lib.cache import DiskCache, config_key
from distill_lib.featnet import RECIPES, FeatNetPool, pretrained
from distill_lib.sweep import Cell, cell_data, choose, pooled, run_cells
from distill_lib.train import resolve_device

COLUMNS = ("DM", "DM(featnet)", "+CC", "+CM", "+CC+CM")


def featnet_setting(text: str, per_class: int) -> dict:
    """``RECIPE:EPOCHS:POOL`` as DistillConfig fields (``default`` takes the ResNet18 on ``per_class`` images)."""
    try:
        name, epochs, pool = text.split(":")
        epochs, pool = int(epochs), int(pool)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected RECIPE:EPOCHS:POOL (e.g. convnet:6:4), got {text!r}") from None
    if name not in RECIPES:
        raise argparse.ArgumentTypeError(f"unknown recipe {name!r}; expected one of {tuple(RECIPES)}")
    shape = dict(featnet_per_class=per_class) if name == "default" else {}
    return dict(featnet_recipe=name, featnet_epochs=epochs, featnet_pool=pool, **shape)


def describe_featnet(setting: dict) -> str:
    recipe = setting["featnet_recipe"]
    where = f" on {setting['featnet_per_class']}/class" if recipe == "default" else ""
    return f"{recipe}{where}, {setting['featnet_epochs']} ep"


def pool_accuracy(config: DistillConfig, seeds: range, validation: int = 0, root=None) -> float:
    """Mean test accuracy of every feature net the row's cells draw, each once: the pools of the distillation
    ``seeds`` (seed s draws nets s .. s + pool - 1), each net's accuracy stored with its weights when trained.
    ``validation``: of the nets the validation cells draw, trained without the held-out images."""
    data = cell_data(Cell(config, EvalProtocol(), validation=validation), root)
    specs = dict.fromkeys(spec for s in seeds
                          for spec in FeatNetPool.specs(replace(config, seed=s).featnet_spec(), config.featnet_pool))
    return statistics.fmean(float(pretrained(data, spec)["accuracy"]) for spec in specs)


def cell_seconds(cells: list[Cell]) -> tuple[str, str]:
    """Seconds to distil the cells' sets, from their cached histories (mean over the cells, e.g. seeds), and the
    machine(s) the cells ran on ("not recorded" for cells made before cells kept it)."""
    entries = [DiskCache("sweep").get(cell.key()) for cell in cells]
    made = [sum(r["seconds"] for r in entry["history"]) for entry in entries]
    machines = dict.fromkeys(entry.get("machine", "not recorded") for entry in entries)
    return f"{statistics.fmean(made):.0f}", "; ".join(machines)


def main() -> None:
    p = parser(__doc__, datasets=["cifar10"], ipcs=[10], seeds=1)
    p.add_argument("--featnets", nargs="+", required=True, metavar="RECIPE:EPOCHS:POOL",
                   help="feature-net settings, one row each (e.g. default:2:1 convnet:6:1 convnet:6:4 paper:40:4)")
    p.add_argument("--featnet-per-class", type=int, default=1000, help="training images per class of 'default'")
    p.add_argument("--lambda-cc", nargs="+", type=float, default=[0.05],
                   help="one value: used as given (0.05: the authors' for DM); several: chosen per row on validation")
    p.add_argument("--lambda-cm", type=float, default=0.01, help="the authors' value for DM by default")
    p.add_argument("--columns", nargs="+", choices=COLUMNS, default=list(COLUMNS),
                   help="the columns to measure (DM always: the gains are over it); '-' in the table for the others")
    p.add_argument("--first-seed", type=int, default=0,
                   help="distillation seeds FIRST .. FIRST + seeds - 1 (a second seed measured as a run of its own)")
    p.add_argument("--figure", default=str(REPO / "figures" / "cc_gain.png"), help="'' for none")
    validation_flags(p)
    args = p.parse_args()
    setup(args)
    settings = [featnet_setting(text, args.featnet_per_class) for text in args.featnets]
    if args.first_seed < 0:
        p.error(f"--first-seed must be >= 0, got {args.first_seed}")
    seeds = range(args.first_seed, args.first_seed + args.seeds)

    protocol = EvalProtocol(epochs=args.eval_epochs, num_models=args.models)
    distributed.setup(resolve_device(protocol.device))  # under torchrun: join now, so only rank 0 prints
    choosing = len(args.lambda_cc) > 1
    lam = (f"lambda_CC chosen per row from {args.lambda_cc} on {args.validation} validation images per class (CC "
           f"alone, seed 0, {args.val_models} evaluation net(s))" if choosing else f"lambda_CC {args.lambda_cc[0]:g}")
    budget = (f"Budget: {args.iterations} iterations, batch_real {args.batch_real}, lr_img 1, init real, full DSA; "
              f"{lam}; lambda_CM {args.lambda_cm:g}; evaluation {protocol.describe()}; {args.seeds} distillation "
              f"seed(s){f' from seed {args.first_seed}' if args.first_seed else ''}; mean ± std over seeds x "
              f"evaluation nets; gains in points over DM.")
    say(budget + "\n", flush=True)

    rows = []  # (dataset, ipc, setting, DM's config, DM's config with the setting's feature nets)
    for dataset in args.datasets:
        for ipc in args.ipcs:
            dm = DistillConfig(dataset=dataset, ipc=ipc, iterations=args.iterations, batch_real=args.batch_real,
                               lambda_cm=args.lambda_cm)
            rows += [(dataset, ipc, setting, dm, replace(dm, **setting)) for setting in settings]
    if choosing:  # CC alone on DM, each row's lambda_CC on the validation split (all rows' candidates one sweep)
        picks = choose([{v: replace(base, cc=True, lambda_cc=v) for v in args.lambda_cc} for *_, base in rows],
                       validation_protocol(args, protocol), args.validation)
        lambdas = [value for value, _ in picks]
        if distributed.is_main():  # progress only; the scan's table comes after the results
            print("validation scan done: lambda_CC " + ", ".join(f"{v:g}" for v in lambdas) + " chosen",
                  file=sys.stderr, flush=True)
    else:
        picks, lambdas = [], [args.lambda_cc[0]] * len(rows)

    def columns(dm: DistillConfig, base: DistillConfig, lambda_cc: float) -> dict[str, DistillConfig]:
        """The row's five configs; DM and +CM use no feature net, so every row shares their cells."""
        return {"DM": dm, "DM(featnet)": replace(base, match_net="featnet"),
                "+CC": replace(base, cc=True, lambda_cc=lambda_cc), "+CM": replace(dm, cm=True),
                "+CC+CM": replace(base, cc=True, cm=True, lambda_cc=lambda_cc)}

    measured = {"DM", *args.columns}
    cells = [(i, name, Cell(replace(config, seed=s), protocol))
             for i, ((*_, dm, base), lambda_cc) in enumerate(zip(rows, lambdas))
             for name, config in columns(dm, base, lambda_cc).items() if name in measured for s in seeds]
    unique = list({config_key(cell.key()): cell for *_, cell in cells}.values())  # shared cells once
    results = dict(zip((config_key(cell.key()) for cell in unique), run_cells(unique)))
    if not distributed.is_main():
        return

    say("| dataset | IPC | feature net | pool | net accuracy | lambda_CC | " + " | ".join(COLUMNS) +
        " | CC gain | control gain | CC+CM gain |")
    say("|---|---|---|---|---|---|" + "---|" * (len(COLUMNS) + 3))
    seconds = {}
    for i, ((dataset, ipc, setting, _, base), lambda_cc) in enumerate(zip(rows, lambdas)):
        mine = {name: [cell for j, n, cell in cells if j == i and n == name] for name in COLUMNS if name in measured}
        got = {name: pooled([results[config_key(cell.key())] for cell in those]) for name, those in mine.items()}

        def gain(name: str) -> str:
            return f"{100 * (got[name].mean - got['DM'].mean):+.2f}" if name in got else "-"
        say(f"| {dataset} | {ipc} | {describe_featnet(setting)} | {base.featnet_pool} | "
            f"{100 * pool_accuracy(base, seeds):.2f} % | {lambda_cc:g} | " + " | ".join(str(got.get(n, "-")) for n in COLUMNS)
            + f" | {gain('+CC')} | {gain('DM(featnet)')} | {gain('+CC+CM')} |")
        for name, those in mine.items():
            seconds.setdefault((dataset, ipc, name if name in ("DM", "+CM") else
                                f"{name}, {describe_featnet(setting)}, pool {base.featnet_pool}"), those)
    say("\n## Seconds to distil one set (mean over seeds, from the cells' histories)\n")
    say("| dataset | IPC | cell | seconds | machine |")
    say("|---|---|---|---|---|")
    for (dataset, ipc, what), those in seconds.items():
        say(f"| {dataset} | {ipc} | {what} | " + " | ".join(cell_seconds(those)) + " |")
    if picks:
        say(f"\n## Validation scan of lambda_CC (CC alone on DM, seed 0; {args.validation} held-out training images "
            f"per class; the feature nets trained without them, their test accuracy as net accuracy)\n")
        say("| dataset | IPC | feature net | pool | net accuracy | lambda_CC | validation accuracy | chosen |")
        say("|---|---|---|---|---|---|---|---|")
        for (dataset, ipc, setting, _, base), (value, scan) in zip(rows, picks):
            accuracy = f"{100 * pool_accuracy(base, range(1), args.validation):.2f} %"
            for v, result in scan.items():
                say(f"| {dataset} | {ipc} | {describe_featnet(setting)} | {setting['featnet_pool']} | {accuracy} | "
                    f"{v:g} | {result} | {'yes' if v == value else ''} |")
    path = write_results("cc_gain", args, budget)
    if args.figure and path is not None:  # this run's rows and those of the runs kept beside it at the same budget
        runs = course.cc_gain_runs(path.parent, like=path)
        figure = course.plot_cc_gain(course.joined([run.tables[0] for run in runs]))
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(args.figure, dpi=120)
        say(f"Figure: {args.figure} (the rows of {len(runs)} run(s))")


if __name__ == "__main__":
    main()
