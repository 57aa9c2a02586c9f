"""What every benchmark script shares: the budget flags, the thread count, where the data is, printing once."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distill_lib import course, distributed  # noqa: E402  (imported from this checkout, found through the line above)


def parser(doc: str, datasets: list[str], ipcs: list[int], seeds: int) -> argparse.ArgumentParser:
    """A parser with the flags all benchmarks take (data sets, IPCs, budgets, seeds, threads)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=datasets)
    p.add_argument("--ipcs", nargs="+", type=int, default=ipcs)
    p.add_argument("--iterations", type=int, default=100, help="distillation iterations per run")
    p.add_argument("--batch-real", type=int, default=128, help="real images per class per iteration")
    p.add_argument("--eval-epochs", type=int, default=200)
    p.add_argument("--models", type=int, default=3, help="evaluation networks per synthetic set")
    p.add_argument("--seeds", type=int, default=seeds, help="distillation / subset seeds")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p


def validation_flags(p: argparse.ArgumentParser) -> None:
    """--validation and --val-models: where hyper-parameters are chosen (held-out training images, never the test
    set) and with how many evaluation nets per candidate."""
    p.add_argument("--validation", type=int, default=500, help="held-out training images per class for choosing")
    p.add_argument("--val-models", type=int, default=1, help="evaluation nets per validation cell")


def say(*args, **kwargs) -> None:
    """print on rank 0 only, so a torchrun job prints each line once (call after joining the process group)."""
    if distributed.is_main():
        print(*args, **kwargs)


def setup(args: argparse.Namespace) -> None:
    """Apply --threads and point $DISTILL_DATA, when unset, at the data folder the course finds (course.data_root)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    course.export_data_root(REPO)
