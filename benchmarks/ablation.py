"""DM vs +CC vs +CM vs +CC+CM at one stated CPU budget, with lambdas chosen on a validation split. Prints tables.

    python benchmarks/ablation.py                                   # Fashion-MNIST and CIFAR-10 at IPC 10
    python benchmarks/ablation.py --datasets cifar10 --ipcs 10 50 --seeds 2

Stage 1 (selection): for each data set, lambda_CC and lambda_CM are each chosen from a small grid by accuracy on
``--validation`` held-out training images per class (the distillation, the feature net and the evaluation networks
then see only the rest of the training set). The real test set is not looked at. Stage 2 (test): the four variants
with the chosen lambdas, mean ± std over seeds x evaluation models. Every cell is cached (distill_lib.sweep).
"""
from __future__ import annotations

from dataclasses import replace

from common import parser, setup
from distill_lib import DistillConfig, EvalProtocol
from distill_lib.sweep import Cell, choose, pooled, run_cell


def variants(base: DistillConfig, lambda_cc: float, lambda_cm: float) -> dict[str, DistillConfig]:
    return {"DM": base,
            "+CC": replace(base, cc=True, lambda_cc=lambda_cc),
            "+CM": replace(base, cm=True, lambda_cm=lambda_cm),
            "+CC+CM": replace(base, cc=True, cm=True, lambda_cc=lambda_cc, lambda_cm=lambda_cm)}


def select(base: DistillConfig, protocol: EvalProtocol, field: str, values: list[float], validation: int) -> float:
    """The value of ``field`` (with its term switched on) with the best validation accuracy; prints the scan."""
    switch = {"lambda_cc": "cc", "lambda_cm": "cm"}[field]
    best, scores = choose({v: replace(base, **{switch: True, field: v}) for v in values}, protocol, validation)
    dm = run_cell(Cell(base, protocol, validation=validation))
    print(f"  {base.dataset} ipc{base.ipc} validation scan of {field}: DM {dm}; " +
          "; ".join(f"{v}: {r}" for v, r in scores.items()), flush=True)
    return best


def main() -> None:
    p = parser(__doc__, datasets=["fashion_mnist", "cifar10"], ipcs=[10], seeds=2)
    p.add_argument("--featnet-arch", default="resnet18")
    p.add_argument("--featnet-epochs", type=int, default=2)
    p.add_argument("--featnet-per-class", type=int, default=1000, help="training images per class for the feature net")
    p.add_argument("--lambda-cc", nargs="+", type=float, default=[0.01, 0.05, 0.2])
    p.add_argument("--lambda-cm", nargs="+", type=float, default=[0.003, 0.01, 0.03])
    p.add_argument("--validation", type=int, default=500, help="held-out training images per class for selection")
    args = p.parse_args()
    setup(args)

    protocol = EvalProtocol(epochs=args.eval_epochs, num_models=args.models)
    print(f"Budget: {args.iterations} iterations, batch_real {args.batch_real}, init real, full DSA; CC feature net "
          f"{args.featnet_arch} trained {args.featnet_epochs} epochs on {args.featnet_per_class} images per class, "
          f"simplified CC; lambdas chosen on {args.validation} validation images per class; evaluation "
          f"{protocol.describe()}; {args.seeds} distillation seeds.\n")
    rows = []
    for dataset in args.datasets:
        for ipc in args.ipcs:
            base = DistillConfig(dataset=dataset, ipc=ipc, iterations=args.iterations, batch_real=args.batch_real,
                                 featnet_arch=args.featnet_arch, featnet_epochs=args.featnet_epochs,
                                 featnet_per_class=args.featnet_per_class)
            lambda_cc = select(base, protocol, "lambda_cc", args.lambda_cc, args.validation)
            lambda_cm = select(base, protocol, "lambda_cm", args.lambda_cm, args.validation)
            results = {name: pooled([run_cell(Cell(replace(config, seed=s), protocol)) for s in range(args.seeds)])
                       for name, config in variants(base, lambda_cc, lambda_cm).items()}
            rows.append((dataset, ipc, lambda_cc, lambda_cm, results))
    print("\n| dataset | IPC | lambda_CC | lambda_CM | DM | +CC | +CM | +CC+CM | +CC+CM - DM |")
    print("|---|---|---|---|---|---|---|---|---|")
    for dataset, ipc, lcc, lcm, r in rows:
        gain = 100 * (r["+CC+CM"].mean - r["DM"].mean)
        print(f"| {dataset} | {ipc} | {lcc} | {lcm} | {r['DM']} | {r['+CC']} | {r['+CM']} | {r['+CC+CM']} | "
              f"{gain:+.2f} |")


if __name__ == "__main__":
    main()
