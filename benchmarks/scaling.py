"""Seconds per distillation iteration on 1 and N processes (torchrun, classes sharded), threads per process stated.

    python benchmarks/scaling.py                                    # CPU, CIFAR-10 shapes: 1 x 1, 1 x 2, 2 x 1
    python benchmarks/scaling.py --layouts 1x2 2x1 --ipcs 10 50 --methods dm dm+cm --reps 10
    python benchmarks/scaling.py --device cuda --layouts 1x1 2x1 4x1 8x1   # GPUs: one process per GPU

A layout ``PxT`` is P processes (``torchrun --nproc-per-node P``) of T torch threads each (OMP_NUM_THREADS=T). Each
layout runs in its own torchrun job: one untimed warm-up iteration, then ``--reps`` timed iterations of
``Distiller.step`` (matching, backward, SGD step and the all-reduce of the loss terms), as recorded in rank 0's
history; the per-iteration all-reduce keeps the ranks in step, so this is the job's time per iteration. Data: the
real CIFAR-10 (or ``--datasets``) when ``$DISTILL_DATA`` (or ../shared/data) has it and ``--data`` is auto/real,
else random uint8 images of the same shape (``--train-per-class`` per class); timing does not depend on pixel
values. CC uses a randomly initialised feature net (as benchmarks/speed.py: its cost does not depend on weights).
Speed-ups are against one process with the same threads per process (what adding processes buys) and with the
same total threads (what splitting the same cores into processes instead of threads buys); the "model" column is
the speed-up the cost model predicts when all work is per class, C / ceil(C / P) (docs/scaling.md).
The load average is printed before and after: on a shared machine the numbers are only indicative. The common flags
--iterations, --eval-epochs, --models and --seeds are not used; --threads is set per layout.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from common import parser, setup, write_results
from distill_lib import distributed
from distill_lib.data import DATASETS, load_dataset
from distill_lib.distill import DistillConfig
from distill_lib.options import RunOptions
from speed import LABELS, METHODS, random_data, summary, timing_distiller

SCRIPT = Path(__file__).resolve()


def parse_layout(text: str) -> tuple[int, int]:
    try:
        procs, threads = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"layout must be PROCESSESxTHREADS, e.g. 2x1; got {text!r}") from None
    if procs < 1 or threads < 1:
        raise argparse.ArgumentTypeError(f"layout needs at least 1 process and 1 thread, got {text!r}")
    return procs, threads


def benchmark_data(name: str, source: str, per_class: int):
    """The real data set when asked for (or found, with 'auto'), else random images of its shape."""
    if source != "random":
        try:
            return load_dataset(name)
        except FileNotFoundError:
            if source == "real":
                raise
    return random_data(name, per_class, test_images=DATASETS[name].num_classes)


# ------------------------------------------------------------------------------------------------------------
# One layout: what every process of a torchrun job runs.

def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    data = benchmark_data(args.dataset, args.data, args.train_per_class)
    config = DistillConfig(dataset=args.dataset, ipc=args.ipc, batch_real=args.batch_real, net_width=args.net_width,
                           featnet_recipe="default", featnet_arch=args.cc_featnet_arch, **METHODS[args.method])
    run = timing_distiller(config, data, RunOptions(device=args.device))
    if run.featnets is not None:
        run.featnets.nets = [net.to(run.device) for net in run.featnets.nets]
    for _ in range(args.reps + 1):
        run.step()
    if distributed.is_main():
        print("RESULT " + json.dumps({"seconds": [r["seconds"] for r in run.history[1:]],
                                      "world": distributed.world_size(), "threads": torch.get_num_threads(),
                                      "classes_rank0": len(run.classes), "source": data.source}), flush=True)


def launch(args: argparse.Namespace, dataset: str, method: str, ipc: int, procs: int, threads: int) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--master-addr",
           "127.0.0.1", "--master-port", str(port), str(SCRIPT), "--worker", "--datasets", dataset,
           "--method", method, "--ipcs", str(ipc), "--threads", str(threads), "--reps", str(args.reps),
           "--batch-real", str(args.batch_real), "--net-width", str(args.net_width), "--device", args.device,
           "--data", args.data, "--train-per-class", str(args.train_per_class),
           "--cc-featnet-arch", args.cc_featnet_arch]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    job = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    lines = [line for line in job.stdout.splitlines() if line.startswith("RESULT ")]
    if job.returncode != 0 or not lines:
        raise RuntimeError(f"layout {procs}x{threads} failed (exit {job.returncode}):\n{job.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__, datasets=["cifar10"], ipcs=[10], seeds=1)
    p.set_defaults(batch_real=256)
    p.add_argument("--layouts", nargs="+", type=parse_layout, default=[(1, 1), (1, 2), (2, 1)],
                   help="PROCESSESxTHREADS per run, e.g. 1x2 2x1 (on GPUs: processes = GPUs)")
    p.add_argument("--methods", nargs="+", default=["dm"], choices=list(METHODS))
    p.add_argument("--reps", type=int, default=5, help="timed iterations per layout (after one warm-up)")
    p.add_argument("--net-width", type=int, default=128)
    p.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per process)")
    p.add_argument("--data", choices=["auto", "real", "random"], default="auto")
    p.add_argument("--train-per-class", type=int, default=5000, help="random images per class when generated")
    p.add_argument("--cc-featnet-arch", default="resnet18")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per layout job")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", default="dm", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    setup(args)
    if args.worker:
        args.dataset, args.ipc = args.datasets[0], args.ipcs[0]
        return worker(args)

    layouts = sorted(args.layouts, key=lambda layout: layout[0] > 1)  # single-process runs first: the baselines
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, device {args.device}; ConvNet width {args.net_width} "
          f"depth 3 instance norm, batch_real {args.batch_real}, full DSA; median (min-max) over {args.reps} "
          f"iteration(s) after one warm-up; layout = processes x threads per process; load average before: "
          f"{load()}\n")
    for dataset in args.datasets:
        classes = DATASETS[dataset].num_classes
        print(f"## {dataset} shapes, {classes} classes\n")
        print("| method | IPC | layout | classes on rank 0 | s/it | speed-up vs 1 x T | vs 1 x (P*T) "
              "| model C / ceil(C/P) | data |")
        print("|---|---|---|---|---|---|---|---|---|")
        for method in args.methods:
            for ipc in args.ipcs:
                single = {}  # threads -> s/it of one process, for the speed-ups
                for procs, threads in layouts:
                    r = launch(args, dataset, method, ipc, procs, threads)
                    med = statistics.median(r["seconds"])
                    if procs == 1:
                        single[threads] = med
                    print(f"| {LABELS[method]} | {ipc} | {procs} x {r['threads']} | {r['classes_rank0']} | "
                          f"{summary(r['seconds'])} | {ratio(single.get(threads), med)} | "
                          f"{ratio(single.get(procs * threads), med)} | {classes / math.ceil(classes / procs):.2f} | "
                          f"{r['source']} |", flush=True)
        print()
    print(f"load average after: {load()}")
    write_results("scaling", args, argv=argv)


def ratio(base: float | None, value: float) -> str:
    return f"{base / value:.2f}" if base else "-"


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg()) + " (1, 5, 15 min)"


if __name__ == "__main__":
    main()
