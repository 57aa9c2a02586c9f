"""beta and lambda ablations of CC (+CM): cluster tightness of the synthetic features and accuracy. Prints tables.

    python benchmarks/beta_lambda.py                              # Fashion-MNIST and CIFAR-10 at IPC 10
    python benchmarks/beta_lambda.py --datasets cifar10 --betas 1 2 4 8 16 --seeds 3
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 benchmarks/beta_lambda.py --threads 1   # cells over 2 processes

Does a smaller beta (paper form of CC) tighten the classes of the synthetic set in the feature net's embedding, and
does it raise accuracy? Which lambda_CC and lambda_CM work? Every choice is made on ``--validation`` held-out
training images per class (feature net, distillation and evaluation networks then see only the rest of the training
set); the test set is used only in stage 2.

Stage 1 (validation, seed 0, ``--val-models`` evaluation nets), per data set and IPC:
  a. alpha of the paper form = 1 / median squared distance of real training features to their class centre in the
     feature net (distill_lib.analysis.featnet_cc_alpha; a rule, no search): exp(alpha d^2) = e at the median.
  b. lambda_CC of the paper form at beta = 1, from ``--lambda-scale`` multiples of the value that pulls a sample at
     the median distance as hard as the simplified form with lambda_CC = 0.05 does (gradient ratio alpha * e).
  c. the beta grid at that lambda: validation accuracy and tightness; beta chosen by validation accuracy.
  d. the lambda ranges of the authors' (simplified) form: lambda_CC scanned with CC alone on DM, lambda_CM with CM
     alone; each chosen by validation accuracy. These are ablation.py's selection cells (same grids, same cache
     entries), so after ablation.py they cost nothing here.
Stage 2 (test, ``--seeds`` distillation seeds): DM, DM + CC (paper form) at every beta of the grid, DM + CC + CM with
the lambdas of d (ablation.py's test cells again). Accuracy: mean ± std over seeds x evaluation networks. Tightness:
spread ratio (intra-class spread / inter-class distance) and silhouette of the synthetic features in the feature net,
and the 1-NN accuracy of real held-out images against the synthetic images, each averaged over seeds. Every cell is
cached (distill_lib.sweep). The cells run in two spreads (stage 1 with a, b and d; then c together with stage 2, whose
settings are known by then), so under torchrun they are dealt over the processes; rank 0 then computes the metrics,
prints, and draws the test stage against beta (``--figure``, figures/beta_lambda.png).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import replace
from pathlib import Path

from ablation import LAMBDA_CC, LAMBDA_CM, budget_line, candidates, featnet_flags, featnet_settings
from common import REPO, parser, say, setup, validation_flags, validation_protocol, write_results
from distill_lib import DistillConfig, EvalProtocol, distributed
from distill_lib.analysis import featnet_cc_alpha
from distill_lib.sweep import Cell, cell_data, cell_metrics, pooled, pretrain_featnets, run_cells
from distill_lib.train import resolve_device

LAMBDA_CC_SIMPLIFIED = 0.05  # the authors' value for DM: the reference pull for the paper form's lambda
METRICS = ("spread_ratio", "silhouette", "knn_accuracy")


def paper_form(config: DistillConfig, validation: int, beta: float, scale: float) -> DistillConfig:
    """``config`` with CC in the paper form; alpha and lambda from the feature net of the cell's own data."""
    data = cell_data(Cell(config, EvalProtocol(), validation=validation))
    alpha = featnet_cc_alpha(data, config.featnet_spec())
    lambda_cc = float(f"{scale * LAMBDA_CC_SIMPLIFIED / (alpha * math.e):.3g}")
    return replace(config, cc=True, cc_form="paper", cc_alpha=alpha, cc_beta=beta, lambda_cc=lambda_cc)


class Bench:
    """The shared protocol and budgets. ``measure`` runs a stage's cells as one spread (under torchrun dealt over the
    processes) and keeps them; ``metrics`` adds the tightness metrics of a measured key, on rank 0 after the stages."""

    def __init__(self, protocol: EvalProtocol, val_protocol: EvalProtocol, validation: int, seeds: int,
                 real_per_class: int):
        self.protocol, self.val_protocol, self.validation = protocol, val_protocol, validation
        self.seeds, self.real_per_class = seeds, real_per_class
        self.cells, self.accuracy = {}, {}  # key -> its cells (one per seed on test) and their pooled accuracy

    def measure(self, validation: dict, test: dict) -> None:
        """Accuracy of each {key: config} of ``validation`` (seed 0, on the held-out split) and each {key: make} of
        ``test`` (``make(seed)`` for every seed, on the test set); all cells of the stage in one call."""
        stage = {key: [Cell(config, self.val_protocol, validation=self.validation)]
                 for key, config in validation.items()}
        stage |= {key: [Cell(make(s), self.protocol) for s in range(self.seeds)] for key, make in test.items()}
        results = iter(run_cells([cell for cells in stage.values() for cell in cells]))
        for key, cells in stage.items():
            self.cells[key], self.accuracy[key] = cells, pooled([next(results) for _ in cells])

    def metrics(self, key) -> dict:
        """Pooled accuracy and seed-averaged tightness metrics of a measured key."""
        with distributed.local():  # one process; every set is already in the cache
            metrics = [cell_metrics(cell, real_per_class=self.real_per_class) for cell in self.cells[key]]
        return {"accuracy": self.accuracy[key], **{k: statistics.fmean(m[k] for m in metrics) for k in METRICS}}

    def best(self, keys: dict):
        """The value of ``keys`` ({value: key}) whose measured accuracy is highest."""
        return max(keys, key=lambda value: self.accuracy[keys[value]].mean)


def fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def plot(beta_rows: list, path: Path) -> None:
    """The test stage against beta, one row per (data set, IPC): the three tightness metrics and the accuracy
    (mean ± std over seeds x nets), DM as a dashed line (its accuracy with a ±std band)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {"spread_ratio": "spread ratio (lower = tighter)", "silhouette": "silhouette",
              "knn_accuracy": "1-NN acc. of real images (%)", "accuracy": "test accuracy (%)"}
    fig, axes = plt.subplots(len(beta_rows), len(panels), figsize=(3.6 * len(panels), 3.0 * len(beta_rows)),
                             squeeze=False, layout="constrained")
    for row, (dataset, ipc, _, _, _, dm, betas_test, _) in zip(axes, beta_rows):
        betas = list(betas_test)
        for ax, (key, name) in zip(row, panels.items()):
            if key == "accuracy":
                mean = [100 * betas_test[b]["accuracy"].mean for b in betas]
                std = [100 * betas_test[b]["accuracy"].std for b in betas]
                ax.errorbar(betas, mean, yerr=std, marker="o", capsize=3, label="DM + CC (paper form)")
                dm_mean, dm_std = 100 * dm["accuracy"].mean, 100 * dm["accuracy"].std
                ax.axhspan(dm_mean - dm_std, dm_mean + dm_std, color="grey", alpha=0.2)
                ax.axhline(dm_mean, color="grey", linestyle="--", label="DM")
            else:
                scale = 100 if key == "knn_accuracy" else 1
                ax.plot(betas, [scale * betas_test[b][key] for b in betas], marker="o", label="DM + CC (paper form)")
                ax.axhline(scale * dm[key], color="grey", linestyle="--", label="DM")
            ax.set(xscale="log", xlabel="beta", title=name)
            ax.set_xticks(betas, [f"{b:g}" for b in betas])
            ax.minorticks_off()
            ax.grid(alpha=0.3)
        row[0].set_ylabel(f"{dataset}, IPC {ipc}", fontsize="large")
        row[0].legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"\nFigure: {path}")


def main() -> None:
    p = parser(__doc__, datasets=["fashion_mnist", "cifar10"], ipcs=[10], seeds=2)
    featnet_flags(p)
    p.add_argument("--betas", nargs="+", type=float, default=[1.0, 2.0, 4.0, 8.0],
                   help="paper-form thresholds (every beta <= 1 is the same method as beta = 1)")
    p.add_argument("--lambda-scale", nargs="+", type=float, default=[0.25, 1.0, 4.0],
                   help="paper-form lambda_CC as multiples of the value matching the simplified form's pull")
    p.add_argument("--lambda-cc", nargs="+", type=float, default=LAMBDA_CC, help="simplified-form scan (CC alone)")
    p.add_argument("--lambda-cm", nargs="+", type=float, default=LAMBDA_CM, help="scan with CM alone")
    validation_flags(p)
    p.add_argument("--real-per-class", type=int, default=100, help="held-out real images per class for the metrics")
    p.add_argument("--figure", default=str(REPO / "figures" / "beta_lambda.png"), help="'' for none")
    args = p.parse_args()
    setup(args)

    protocol = EvalProtocol(epochs=args.eval_epochs, num_models=args.models)
    distributed.setup(resolve_device(protocol.device))  # under torchrun: join now, so only rank 0 prints
    val_protocol = validation_protocol(args, protocol)
    bench = Bench(protocol, val_protocol, args.validation, args.seeds, args.real_per_class)
    budget = (budget_line(args, protocol, "lambda_CC scale, beta and the simplified lambdas") +
              f" on test; metrics on {args.real_per_class} held-out images per class.")
    say(budget + "\n", flush=True)
    val = args.validation
    bases = [DistillConfig(dataset=dataset, ipc=ipc, iterations=args.iterations, batch_real=args.batch_real,
                           **featnet_settings(args)) for dataset in args.datasets for ipc in args.ipcs]
    # The feature nets first (one per data set and split, each by one rank): alpha and every CC cell use them.
    pretrain_featnets([Cell(replace(base, cc=True), protocol, validation=v) for base in bases for v in (val, 0)])
    grids = {"lambda_cc": args.lambda_cc, "lambda_cm": args.lambda_cm}
    # Stage 1 (validation): DM; b. the paper form's lambda scale at beta 1; d. the simplified lambda scans.
    bench.measure({**{(b, "DM"): b for b in bases},
                   **{(b, "scale", s): paper_form(b, val, 1.0, s) for b in bases for s in args.lambda_scale},
                   **{(b, field, v): config for b in bases for field, v, config in candidates(b, grids) if field}}, {})
    scale = {b: bench.best({s: (b, "scale", s) for s in args.lambda_scale}) for b in bases}
    lambdas = {b: tuple(bench.best({v: (b, field, v) for v in grids[field]}) for field in grids) for b in bases}
    # Stage 2 (validation): c. the beta grid at the chosen scale; and (test) the variants whose settings are known.
    bench.measure({(b, "beta", beta): paper_form(b, val, beta, scale[b]) for b in bases for beta in args.betas},
                  {**{(b, "DM", "test"): (lambda s, b=b: replace(b, seed=s)) for b in bases},
                   **{(b, "beta", beta, "test"): (lambda s, b=b, beta=beta: paper_form(replace(b, seed=s), 0, beta,
                                                                                       scale[b]))
                      for b in bases for beta in args.betas},
                   **{(b, "CC+CM", "test"): (lambda s, b=b: replace(b, seed=s, cc=True, cm=True,
                                                                   lambda_cc=lambdas[b][0], lambda_cm=lambdas[b][1]))
                      for b in bases}})
    if not distributed.is_main():
        return  # the metrics and tables are rank 0's
    beta_rows, scan_rows, final_rows = [], [], []
    for b in bases:
        dm_val = bench.metrics((b, "DM"))
        scales = {s: bench.metrics((b, "scale", s)) for s in args.lambda_scale}
        print(f"  {b.dataset} ipc{b.ipc} validation, paper-form lambda scale at beta 1: DM {dm_val['accuracy']}; " +
              "; ".join(f"x{s:g}: {r['accuracy']} (spread {fmt(r['spread_ratio'])})" for s, r in scales.items()) +
              f" -> x{scale[b]:g}", flush=True)
        betas_val = {beta: bench.metrics((b, "beta", beta)) for beta in args.betas}
        beta = bench.best({beta: (b, "beta", beta) for beta in args.betas})
        scans = {field: {v: bench.metrics((b, field, v)) for v in grids[field]} for field in grids}
        scan_rows.append((b.dataset, b.ipc, dm_val, scans, lambdas[b]))
        dm = bench.metrics((b, "DM", "test"))
        betas_test = {beta: bench.metrics((b, "beta", beta, "test")) for beta in args.betas}
        combined = bench.metrics((b, "CC+CM", "test"))
        seed0 = paper_form(b, 0, beta, scale[b])  # the alpha and lambda the test cells of seed 0 used
        beta_rows.append((b.dataset, b.ipc, seed0, dm_val, betas_val, dm, betas_test, beta))
        final_rows.append((b.dataset, b.ipc, dm, betas_test[beta], beta, combined, lambdas[b]))

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

    print("\n### lambda scans of the simplified form (each term alone on DM): validation accuracy and spread ratio\n")
    width = max(map(len, grids.values()))
    print("| dataset | IPC | lambda | DM | " + " | ".join(f"value {i + 1}" for i in range(width)) + " | chosen |")
    print("|---|---|---|---|" + "---|" * (width + 1))
    for dataset, ipc, dm_val, scans, chosen in scan_rows:
        for (field, scan), pick in zip(scans.items(), chosen):
            cells = [f"{v:g}: {r['accuracy']} ({fmt(r['spread_ratio'])})" for v, r in scan.items()]
            cells += [""] * (width - len(cells))
            print(f"| {dataset} | {ipc} | {field} | {dm_val['accuracy']} ({fmt(dm_val['spread_ratio'])}) | "
                  + " | ".join(cells) + f" | {pick:g} |")
    print()

    print("### test set, choices from validation\n")
    print("| dataset | IPC | DM | +CC paper form (beta) | +CC+CM simplified (lambdas) | +CC+CM - DM |")
    print("|---|---|---|---|---|---|")
    for dataset, ipc, dm, cc, beta, combined, (lcc, lcm) in final_rows:
        gain = 100 * (combined["accuracy"].mean - dm["accuracy"].mean)
        print(f"| {dataset} | {ipc} | {dm['accuracy']} | {cc['accuracy']} ({beta:g}) | {combined['accuracy']} "
              f"({lcc:g}, {lcm:g}) | {gain:+.2f} |")
    if args.figure:
        plot(beta_rows, Path(args.figure))
    write_results("beta_lambda", args, budget)


if __name__ == "__main__":
    main()
