"""beta and lambda ablations of CC (+CM): cluster tightness of the synthetic features and accuracy. Prints tables.

    python benchmarks/beta_lambda.py                              # Fashion-MNIST and CIFAR-10 at IPC 10
    python benchmarks/beta_lambda.py --datasets cifar10 --betas 1 2 4 8 16 --seeds 3

Does a smaller beta (paper form of CC) tighten the classes of the synthetic set in the feature net's embedding, and
does it raise accuracy? Which lambda_CC and lambda_CM work? Every choice is made on ``--validation`` held-out
training images per class (feature net, distillation and evaluation networks then see only the rest of the training
set); the test set is used only in stage 2.

Stage 1 (validation, seed 0), per data set and IPC:
  a. alpha of the paper form = 1 / median squared distance of real training features to their class centre in the
     feature net (distill_lib.analysis.featnet_cc_alpha; a rule, no search): exp(alpha d^2) = e at the median.
  b. lambda_CC of the paper form at beta = 1, from ``--lambda-scale`` multiples of the value that pulls a sample at
     the median distance as hard as the simplified form with lambda_CC = 0.05 does (gradient ratio alpha * e).
  c. the beta grid at that lambda: validation accuracy and tightness; beta chosen by validation accuracy.
  d. the lambda ranges of the authors' (simplified) form: lambda_CC x lambda_CM grid of DM + CC + CM.
Stage 2 (test, ``--seeds`` distillation seeds): DM, DM + CC (paper form) at every beta of the grid, DM + CC + CM with
the lambdas of d. Accuracy: mean ± std over seeds x evaluation networks. Tightness: spread ratio (intra-class spread /
inter-class distance) and silhouette of the synthetic features in the feature net, and the 1-NN accuracy of real
held-out images against the synthetic images, each averaged over seeds. Every cell is cached (distill_lib.sweep).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import replace

from common import parser, setup
from distill_lib import DistillConfig, EvalProtocol
from distill_lib.analysis import featnet_cc_alpha
from distill_lib.sweep import Cell, cell_data, cell_metrics, pooled, run_cell

LAMBDA_CC_SIMPLIFIED = 0.05  # the authors' value for DM: the reference pull for the paper form's lambda
METRICS = ("spread_ratio", "silhouette", "knn_accuracy")


def paper_form(config: DistillConfig, validation: int, beta: float, scale: float) -> DistillConfig:
    """``config`` with CC in the paper form; alpha and lambda from the feature net of the cell's own data."""
    data = cell_data(Cell(config, EvalProtocol(), validation=validation))
    alpha = featnet_cc_alpha(data, config.featnet_spec())
    lambda_cc = float(f"{scale * LAMBDA_CC_SIMPLIFIED / (alpha * math.e):.3g}")
    return replace(config, cc=True, cc_form="paper", cc_alpha=alpha, cc_beta=beta, lambda_cc=lambda_cc)


class Bench:
    """The shared protocol and budgets; measures cells and prints the scans as they finish."""

    def __init__(self, protocol: EvalProtocol, validation: int, seeds: int, real_per_class: int):
        self.protocol, self.validation, self.seeds, self.real_per_class = protocol, validation, seeds, real_per_class

    def validate(self, config: DistillConfig) -> dict:
        cell = Cell(config, self.protocol, validation=self.validation)
        return {"accuracy": run_cell(cell), **cell_metrics(cell, real_per_class=self.real_per_class)}

    def test(self, make) -> dict:
        """Pooled accuracy and seed-averaged metrics of ``make(seed)`` on the test set."""
        cells = [Cell(make(seed), self.protocol) for seed in range(self.seeds)]
        accuracy = pooled([run_cell(cell) for cell in cells])  # first: its log line times the distillation
        metrics = [cell_metrics(cell, real_per_class=self.real_per_class) for cell in cells]
        return {"accuracy": accuracy, **{k: statistics.fmean(m[k] for m in metrics) for k in METRICS}}


def fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def main() -> None:
    p = parser(__doc__, datasets=["fashion_mnist", "cifar10"], ipcs=[10], seeds=2)
    p.add_argument("--featnet-arch", default="resnet18")
    p.add_argument("--featnet-epochs", type=int, default=2)
    p.add_argument("--featnet-per-class", type=int, default=1000, help="training images per class for the feature net")
    p.add_argument("--betas", nargs="+", type=float, default=[1.0, 2.0, 4.0, 8.0],
                   help="paper-form thresholds (every beta <= 1 is the same method as beta = 1)")
    p.add_argument("--lambda-scale", nargs="+", type=float, default=[0.25, 1.0, 4.0],
                   help="paper-form lambda_CC as multiples of the value matching the simplified form's pull")
    p.add_argument("--lambda-cc", nargs="+", type=float, default=[0.01, 0.05, 0.2], help="simplified-form grid")
    p.add_argument("--lambda-cm", nargs="+", type=float, default=[0.003, 0.01, 0.03])
    p.add_argument("--validation", type=int, default=500, help="held-out training images per class for selection")
    p.add_argument("--real-per-class", type=int, default=100, help="held-out real images per class for the metrics")
    args = p.parse_args()
    setup(args)

    protocol = EvalProtocol(epochs=args.eval_epochs, num_models=args.models)
    bench = Bench(protocol, args.validation, args.seeds, args.real_per_class)
    print(f"Budget: {args.iterations} iterations, batch_real {args.batch_real}, init real, full DSA; CC feature net "
          f"{args.featnet_arch} trained {args.featnet_epochs} epochs on {args.featnet_per_class} images per class; "
          f"choices on {args.validation} validation images per class (seed 0); evaluation {protocol.describe()}; "
          f"{args.seeds} distillation seeds on test; metrics on {args.real_per_class} held-out images per class.\n",
          flush=True)
    beta_rows, grid_rows, final_rows = [], [], []
    for dataset in args.datasets:
        for ipc in args.ipcs:
            base = DistillConfig(dataset=dataset, ipc=ipc, iterations=args.iterations, batch_real=args.batch_real,
                                 featnet_arch=args.featnet_arch, featnet_epochs=args.featnet_epochs,
                                 featnet_per_class=args.featnet_per_class)
            val = args.validation
            dm_val = bench.validate(base)
            # b. the paper form's lambda scale at beta = 1
            scales = {s: bench.validate(paper_form(base, val, 1.0, s)) for s in args.lambda_scale}
            scale = max(scales, key=lambda s: scales[s]["accuracy"].mean)
            print(f"  {dataset} ipc{ipc} validation, paper-form lambda scale at beta 1: DM {dm_val['accuracy']}; " +
                  "; ".join(f"x{s:g}: {r['accuracy']} (spread {fmt(r['spread_ratio'])})" for s, r in scales.items()) +
                  f" -> x{scale:g}", flush=True)
            # c. the beta grid on validation
            betas_val = {b: bench.validate(paper_form(base, val, b, scale)) for b in args.betas}
            beta = max(betas_val, key=lambda b: betas_val[b]["accuracy"].mean)
            # d. the lambda grid of the simplified form, DM + CC + CM
            grid = {(lcc, lcm): bench.validate(replace(base, cc=True, cm=True, lambda_cc=lcc, lambda_cm=lcm))
                    for lcc in args.lambda_cc for lcm in args.lambda_cm}
            lcc, lcm = max(grid, key=lambda k: grid[k]["accuracy"].mean)
            grid_rows.append((dataset, ipc, dm_val, grid, (lcc, lcm)))
            # Stage 2: the test set.
            dm = bench.test(lambda s: replace(base, seed=s))
            betas_test = {b: bench.test(lambda s, b=b: paper_form(replace(base, seed=s), 0, b, scale))
                          for b in args.betas}
            combined = bench.test(lambda s: replace(base, seed=s, cc=True, cm=True, lambda_cc=lcc, lambda_cm=lcm))
            seed0 = paper_form(base, 0, beta, scale)  # the alpha and lambda the test cells of seed 0 used
            beta_rows.append((dataset, ipc, seed0, dm_val, betas_val, dm, betas_test, beta))
            final_rows.append((dataset, ipc, dm, betas_test[beta], beta, combined, (lcc, lcm)))

    print("\n### beta (paper form of CC): tightness of the synthetic features and accuracy\n")
    print("| dataset | IPC | method | val. acc. | val. spread | test acc. | spread ratio | silhouette | 1-NN acc. |")
    print("|---|---|---|---|---|---|---|---|---|")
    for dataset, ipc, seed0, dm_val, betas_val, dm, betas_test, chosen in beta_rows:
        print(f"| {dataset} | {ipc} | DM | {dm_val['accuracy']} | {fmt(dm_val['spread_ratio'])} | {dm['accuracy']} | "
              f"{fmt(dm['spread_ratio'])} | {fmt(dm['silhouette'])} | {pct(dm['knn_accuracy'])} |")
        for b in betas_val:
            v, t = betas_val[b], betas_test[b]
            mark = " (chosen)" if b == chosen else ""
            print(f"| {dataset} | {ipc} | +CC beta {b:g}{mark} | {v['accuracy']} | {fmt(v['spread_ratio'])} | "
                  f"{t['accuracy']} | {fmt(t['spread_ratio'])} | {fmt(t['silhouette'])} | {pct(t['knn_accuracy'])} |")
        print(f"| {dataset} | {ipc} | (test, seed 0: alpha {seed0.cc_alpha:g}, lambda_CC {seed0.lambda_cc:g}) "
              "| | | | | | |")

    print("\n### lambda_CC (simplified) x lambda_CM, DM + CC + CM, validation accuracy\n")
    for dataset, ipc, dm_val, grid, chosen in grid_rows:
        cms = sorted({k[1] for k in grid})
        print(f"{dataset}, IPC {ipc} (DM: {dm_val['accuracy']}; chosen lambda_CC {chosen[0]:g}, "
              f"lambda_CM {chosen[1]:g})\n")
        print("| lambda_CC \\ lambda_CM | " + " | ".join(f"{c:g}" for c in cms) + " |")
        print("|---|" + "---|" * len(cms))
        for cc in sorted({k[0] for k in grid}):
            print(f"| {cc:g} | " + " | ".join(f"{grid[cc, c]['accuracy']} (spread {fmt(grid[cc, c]['spread_ratio'])})"
                                            for c in cms) + " |")
        print()

    print("### test set, choices from validation\n")
    print("| dataset | IPC | DM | +CC paper form (beta) | +CC+CM simplified (lambdas) | +CC+CM - DM |")
    print("|---|---|---|---|---|---|")
    for dataset, ipc, dm, cc, beta, combined, (lcc, lcm) in final_rows:
        gain = 100 * (combined["accuracy"].mean - dm["accuracy"].mean)
        print(f"| {dataset} | {ipc} | {dm['accuracy']} | {cc['accuracy']} ({beta:g}) | {combined['accuracy']} "
              f"({lcc:g}, {lcm:g}) | {gain:+.2f} |")


if __name__ == "__main__":
    main()
