"""DM vs +CC vs +CM vs +CC+CM at one stated CPU budget, with lambdas chosen on a validation split. Prints tables.

    python benchmarks/ablation.py                                   # Fashion-MNIST and CIFAR-10 at IPC 10
    python benchmarks/ablation.py --datasets cifar10 --ipcs 10 50 --seeds 2
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 benchmarks/ablation.py --datasets fashion_mnist   # 2 cores

Stage 1 (selection): for each data set, lambda_CC and lambda_CM are each chosen from a small grid by accuracy on
``--validation`` held-out training images per class (the distillation, the feature net and the evaluation networks
then see only the rest of the training set). The real test set is not looked at. Stage 2 (test): the four variants
with the chosen lambdas, mean ± std over seeds x evaluation models. Every cell is cached (distill_lib.sweep); each
stage is one sweep, so under torchrun its cells (and first the feature nets they need) are dealt over the processes.
"""
from __future__ import annotations

import argparse
from dataclasses import replace

from common import parser, say, setup, validation_flags, validation_protocol, write_results
from distill_lib import DistillConfig, EvalProtocol, distributed
from distill_lib.evaluate import EvalResult
from distill_lib.featnet import RECIPES
from distill_lib.sweep import sweep
from distill_lib.train import resolve_device

TERMS = {"lambda_cc": "cc", "lambda_cm": "cm"}  # each lambda and the switch of its term
LAMBDA_CC = [0.001, 0.003, 0.01, 0.05, 0.2]  # the scans (beta_lambda.py runs the same cells, shared by the cache)
LAMBDA_CM = [0.003, 0.01, 0.03, 0.1, 0.3]


def variants(base: DistillConfig, lambda_cc: float, lambda_cm: float) -> dict[str, DistillConfig]:
    return {"DM": base,
            "+CC": replace(base, cc=True, lambda_cc=lambda_cc),
            "+CM": replace(base, cm=True, lambda_cm=lambda_cm),
            "+CC+CM": replace(base, cc=True, cm=True, lambda_cc=lambda_cc, lambda_cm=lambda_cm)}


def candidates(base: DistillConfig,
               grids: dict[str, list[float]]) -> list[tuple[str | None, float | None, DistillConfig]]:
    """The selection cells of one (data set, IPC): DM, then each lambda's grid with only its term switched on."""
    return [(None, None, base)] + [(field, v, replace(base, **{TERMS[field]: True, field: v}))
                                   for field, values in grids.items() for v in values]


def select_lambdas(bases: list[DistillConfig], grids: dict[str, list[float]], val_protocol: EvalProtocol,
                   validation: int) -> list[dict[str, float]]:
    """Stage 1: for each base, each lambda of ``grids`` chosen (with only its own term on) by accuracy on
    ``validation`` held-out training images per class; every selection cell of every base is one sweep."""
    scans = [candidates(base, grids) for base in bases]
    records = iter(sweep([config for scan in scans for _, _, config in scan], val_protocol, validation))
    chosen = []
    for base, scan in zip(bases, scans):
        scored = [(field, value, next(records)) for field, value, _ in scan]
        picks = {}
        for field in grids:
            tried = [(value, r) for f, value, r in scored if f == field]
            picks[field] = max(tried, key=lambda t: t[1]["mean"])[0]
            say(f"  {base.dataset} ipc{base.ipc} validation scan of {field}: DM {result(scored[0][2])}; " +
                "; ".join(f"{value:g}: {result(r)}" for value, r in tried), flush=True)
        chosen.append(picks)
    return chosen


def featnet_flags(p: argparse.ArgumentParser) -> None:
    """The CC feature net's flags (this script's and beta_lambda.py's): a recipe, or the default's net and subset."""
    p.add_argument("--featnet-arch", default="resnet18")
    p.add_argument("--featnet-epochs", type=int, default=2)
    p.add_argument("--featnet-per-class", type=int, default=1000, help="training images per class for the feature net")
    p.add_argument("--featnet-recipe", default="default", choices=tuple(RECIPES),
                   help="a named feature-net recipe (docs/featnets.md); other than 'default' it fixes the net and its "
                        "training set, so --featnet-arch and --featnet-per-class are ignored")
    p.add_argument("--featnet-pool", type=int, default=1, help="feature nets drawn from per iteration")


def featnet_settings(args: argparse.Namespace) -> dict:
    """The DistillConfig fields that :func:`featnet_flags` set."""
    shape = (dict(featnet_arch=args.featnet_arch, featnet_per_class=args.featnet_per_class)
             if args.featnet_recipe == "default" else {})
    return dict(featnet_recipe=args.featnet_recipe, featnet_epochs=args.featnet_epochs,
                featnet_pool=args.featnet_pool, **shape)


def budget_line(args: argparse.Namespace, protocol: EvalProtocol, chosen: str) -> str:
    """The budget of this script's and beta_lambda.py's cells (they share them): distillation, CC feature net, where
    ``chosen`` settings are chosen, evaluation, seeds."""
    featnet = (f"{args.featnet_arch} trained {args.featnet_epochs} epochs on {args.featnet_per_class} images per class"
               if args.featnet_recipe == "default" else
               f"recipe {args.featnet_recipe!r} (docs/featnets.md) trained {args.featnet_epochs} epochs")
    return (f"Budget: {args.iterations} iterations, batch_real {args.batch_real}, init real, full DSA; CC feature net "
            f"{featnet}, pool of {args.featnet_pool}; "
            f"{chosen} chosen on {args.validation} validation images per class (seed 0, {args.val_models} "
            f"evaluation net(s)); evaluation {protocol.describe()}; {args.seeds} distillation seeds")


def main() -> None:
    p = parser(__doc__, datasets=["fashion_mnist", "cifar10"], ipcs=[10], seeds=2)
    featnet_flags(p)
    p.add_argument("--lambda-cc", nargs="+", type=float, default=LAMBDA_CC)
    p.add_argument("--lambda-cm", nargs="+", type=float, default=LAMBDA_CM)
    validation_flags(p)
    args = p.parse_args()
    setup(args)

    protocol = EvalProtocol(epochs=args.eval_epochs, num_models=args.models)
    distributed.setup(resolve_device(protocol.device))  # under torchrun: join now, so only rank 0 prints
    val_protocol = validation_protocol(args, protocol)
    budget = budget_line(args, protocol, "simplified CC; lambdas") + "."
    say(budget + "\n", flush=True)
    grids = {"lambda_cc": args.lambda_cc, "lambda_cm": args.lambda_cm}
    bases = [DistillConfig(dataset=dataset, ipc=ipc, iterations=args.iterations, batch_real=args.batch_real,
                           **featnet_settings(args)) for dataset in args.datasets for ipc in args.ipcs]

    chosen = select_lambdas(bases, grids, val_protocol, args.validation)

    # Stage 2: the four variants x seeds of every (data set, IPC) in one sweep (seeds adjacent: ranks share them out).
    tests = [(i, name, replace(config, seed=s)) for i, (base, picks) in enumerate(zip(bases, chosen))
             for name, config in variants(base, picks["lambda_cc"], picks["lambda_cm"]).items()
             for s in range(args.seeds)]
    results = sweep([config for _, _, config in tests], protocol)
    pooled = {}  # (base, variant) -> accuracies over seeds x models
    for (i, name, _), record in zip(tests, results):
        pooled.setdefault((i, name), []).extend(record["accuracies"])
    say("\n| dataset | IPC | lambda_CC | lambda_CM | DM | +CC | +CM | +CC+CM | +CC+CM - DM |")
    say("|---|---|---|---|---|---|---|---|---|")
    for i, (base, picks) in enumerate(zip(bases, chosen)):
        cols = {name: EvalResult(tuple(pooled[(i, name)])) for name in ("DM", "+CC", "+CM", "+CC+CM")}
        gain = 100 * (cols["+CC+CM"].mean - cols["DM"].mean)
        say(f"| {base.dataset} | {base.ipc} | {picks['lambda_cc']:g} | {picks['lambda_cm']:g} | " +
            " | ".join(str(r) for r in cols.values()) + f" | {gain:+.2f} |")
    write_results("ablation", args, budget)


def result(record: dict) -> EvalResult:
    return EvalResult(tuple(record["accuracies"]))


if __name__ == "__main__":
    main()
