"""DM, DM+CC+CM, IDM and IDM+CC+CM next to a random real subset of the same storage, at one stated CPU budget.

    python benchmarks/idm.py --threads 1                     # Fashion-MNIST and CIFAR-10 at IPC 1 and 10, 2 seeds
    python benchmarks/idm.py --ipcs 10 --methods DM IDM      # two columns (and the random subset) only
    python benchmarks/idm.py --datasets cifar10 --ipcs 10 --queue-train-steps 10 --queue-batch 256  # authors' queue
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 benchmarks/idm.py --threads 1    # the cells dealt over 2 processes

Storage is the same in every column of a row: IPC stored images per class. An IDM image holds 2x2 partitions (four
training images after decoding), a DM image one, and the random subset is IPC real images per class. Every method
runs the same number of iterations; IDM's iterations cost more (its queue nets train on real data), so the script
also prints the measured seconds per iteration. The queue nets' training is the expensive part of IDM on a CPU (the
authors' 10 SGD steps of 256 images per trained net per iteration make an IDM iteration many times as costly as a DM
one; docs/results.md gives the measured ratio), so by default this CPU budget trains them 2 steps of 128 images
(stated in the output). Needs the data sets (DISTILL_DATA, or ../shared/data beside the checkout). Each cell
(dataset, IPC, method, seed) is cached on disk under its full config (distill_lib.sweep), so an interrupted run
continues where it stopped and a wider grid only computes the new cells.
"""
from __future__ import annotations

import statistics
from dataclasses import replace

from ablation import LAMBDA_CC, LAMBDA_CM, select_lambdas
from common import parser, say, setup, validation_flags, validation_protocol, write_results
from distill_lib import DistillConfig, EvalProtocol, distributed
from distill_lib.cache import DiskCache
from distill_lib.idm import QueueSpec
from distill_lib.sweep import Cell, pooled, run_cells
from distill_lib.train import resolve_device

METHODS = {"DM": dict(method="dm"), "DM+CC+CM": dict(method="dm", cc=True, cm=True),
           "IDM": dict(method="idm"), "IDM+CC+CM": dict(method="idm", cc=True, cm=True),
           # Diagnostic columns, for where IDM loses to DM: IDM without its partitions (the queue nets and the CE
           # only), then that without the CE or with DM's image step size.
           "IDM factor 1": dict(method="idm", factor=1),
           "IDM factor 1, CE 0": dict(method="idm", factor=1, ce_weight=0.0),
           "IDM factor 1, lr_img 1": dict(method="idm", factor=1, lr_img=1.0)}
TABLE = ["DM", "DM+CC+CM", "IDM", "IDM+CC+CM"]  # the default columns
START = "IDM's start"  # IDM's set before its first iteration: factor² real images per class, each tile downsampled


def main() -> None:
    p = parser(__doc__, datasets=["fashion_mnist", "cifar10"], ipcs=[1, 10], seeds=2)
    p.add_argument("--featnet-arch", default="resnet18", help="CC's pretrained feature net")
    p.add_argument("--featnet-epochs", type=int, default=2)
    p.add_argument("--featnet-per-class", type=int, default=1000, help="training images per class for the feature net")
    p.add_argument("--queue-train-steps", type=int, default=2,
                   help="IDM: SGD steps per trained queue net per iteration (the authors: 10)")
    p.add_argument("--queue-batch", type=int, default=128,
                   help="IDM: real images per SGD step of a queue net (the authors: 256)")
    p.add_argument("--queue-push-interval", type=int, default=30, help="IDM: a new queue net every N iterations")
    p.add_argument("--methods", nargs="+", choices=[*METHODS, START], default=TABLE,
                   help=f"the columns to run and print (a subset first gets the columns that matter most cached; "
                        f"{START!r}: what IDM's decoded tiles give before any distillation)")
    validation_flags(p)  # where DM+CC+CM's lambdas are chosen (ablation.py's scans; its cached cells)
    args = p.parse_args()
    setup(args)

    protocol = EvalProtocol(epochs=args.eval_epochs, num_models=args.models)
    distributed.setup(resolve_device(protocol.device))  # under torchrun: join now, so only rank 0 prints
    dm, idm = (DistillConfig(method=m).resolved() for m in ("dm", "idm"))
    budget = (f"Storage = IPC images per class in every column (an IDM image stores {idm.factor}x{idm.factor} "
              f"partitions, i.e. {idm.factor ** 2} training images; the random subset is IPC real images per class).\n"
              f"Budget: {args.iterations} iterations for every method, batch_real {args.batch_real}, init real, full "
              f"DSA; lr_img DM {dm.lr_img}, IDM {idm.lr_img}; IDM queue of ConvNets ({idm.queue.train_nets} trained "
              f"per iteration, {args.queue_train_steps} SGD steps of {args.queue_batch} real images each, lr "
              f"{idm.queue.lr}, a new net every {args.queue_push_interval} iterations, at most {idm.queue.length}), "
              f"CE weight {idm.ce_weight} x net accuracy; lambda_CC / lambda_CM IDM {idm.lambda_cc} / "
              f"{idm.lambda_cm}, {idm.cc_form} CC on a {args.featnet_arch} feature net trained "
              f"{args.featnet_epochs} epochs on {args.featnet_per_class} images per class; DM+CC+CM's lambdas chosen "
              f"as in benchmarks/ablation.py (each from its scan, on {args.validation} held-out training images per "
              f"class), IDM's are the authors' defaults; evaluation on the decoded images: {protocol.describe()}; "
              f"{args.seeds} distillation seed(s); mean ± std over seeds x models.\n"
              f"At IPC 1 the DM+CC+CM column is DM's cells: one sample per class makes CC zero and CM gradient-free, "
              f"so the images are DM's (tests/test_distill.py::test_ipc1_with_cc_and_cm_warns_and_cc_is_zero).")
    say(budget + "\n")
    bases = [DistillConfig(dataset=dataset, ipc=ipc, iterations=args.iterations, batch_real=args.batch_real,
                           featnet_recipe="default", featnet_arch=args.featnet_arch, featnet_epochs=args.featnet_epochs,
                           featnet_per_class=args.featnet_per_class,
                           queue=QueueSpec(train_steps=args.queue_train_steps, batch=args.queue_batch,
                                           push_interval=args.queue_push_interval))
             for dataset in args.datasets for ipc in args.ipcs]
    # DM+CC+CM at IPC 1 is not a cell of its own (see above), it reads DM's; at IPC > 1 it runs at validated lambdas.
    def method(base: DistillConfig, name: str) -> str:
        return "DM" if name == "DM+CC+CM" and base.ipc == 1 else name

    # Its validation scans run only when the column is asked for (22 cells per data set and IPC).
    tuned = [b for b in bases if "DM+CC+CM" in args.methods and method(b, "DM+CC+CM") == "DM+CC+CM"]
    picks = dict(zip(tuned, select_lambdas(tuned, {"lambda_cc": LAMBDA_CC, "lambda_cm": LAMBDA_CM},
                                           validation_protocol(args, protocol), args.validation)))
    for base, chosen in picks.items():
        say(f"  DM+CC+CM on {base.dataset} IPC {base.ipc}: lambda_CC {chosen['lambda_cc']:g}, "
            f"lambda_CM {chosen['lambda_cm']:g} (validation)", flush=True)

    def config(base: DistillConfig, name: str, seed: int) -> DistillConfig:
        return replace(base, seed=seed, **METHODS[name], **(picks.get(base, {}) if name == "DM+CC+CM" else {}))

    # Every cell of the table is one spread (under torchrun dealt over the processes).
    names = ["random", *args.methods]
    needed = {(base, method(base, name)) for base in bases for name in names}
    def cell(base: DistillConfig, name: str, seed: int) -> Cell:
        if name in ("random", START):
            return Cell(replace(base, seed=seed, method="idm"), protocol, "random" if name == "random" else "init")
        return Cell(config(base, name, seed), protocol)

    cells = {(base, name): [cell(base, name, s) for s in range(args.seeds)]
             for base in bases for name in ("random", START, *METHODS) if (base, name) in needed}
    results = iter(run_cells([cell for group in cells.values() for cell in group]))
    measured = {key: pooled([next(results) for _ in group]) for key, group in cells.items()}
    r = {(b, name): measured[b, method(b, name)] for b in bases for name in names}
    gaps = [(a, b) for a, b in (("IDM", "DM"), ("IDM+CC+CM", "DM+CC+CM")) if a in names and b in names]
    say("\n### Test accuracy\n")
    say("| dataset | IPC | random subset | " + " | ".join(args.methods) + "".join(f" | {a} - {b}" for a, b in gaps) +
        " |")
    say("|---|---|" + "---|" * (len(names) + len(gaps)))
    for b in bases:
        columns = [f"{r[b, name]}" + ("" if method(b, name) == name else f" ({method(b, name)}'s)") for name in names]
        columns += [f"{100 * (r[b, high].mean - r[b, low].mean):+.2f}" for high, low in gaps]
        say(f"| {b.dataset} | {b.ipc} | " + " | ".join(columns) + " |", flush=True)
    say("\n### Seconds per distillation iteration (mean over the iterations of every seed, as measured when each "
        "cell was computed)\n")
    distilled = [m for m in args.methods if m in METHODS]
    say("| dataset | IPC | " + " | ".join(distilled) + " |")
    say("|---|---|" + "---|" * len(distilled))
    cache = DiskCache("sweep")
    for b in bases:
        per_it = [f"({method(b, m)}'s)" if method(b, m) != m else
                  f"{statistics.fmean(h['seconds'] for c in cells[b, m] for h in cache.get(c.key())['history']):.2f}"
                  for m in distilled]
        say(f"| {b.dataset} | {b.ipc} | " + " | ".join(per_it) + " |")
    write_results("idm", args, budget)


if __name__ == "__main__":
    main()
