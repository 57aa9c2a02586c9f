"""Command line: ``python -m distill_lib {distill,evaluate,run} --help``.

Options are generated from the fields of :class:`DistillConfig` and :class:`EvalProtocol` (evaluation options carry an
``--eval-`` prefix), so the CLI can never drift from the library. Every command also runs under
``torchrun --nproc-per-node N -m distill_lib ...``: the work is split over the processes and only rank 0 writes
files and prints results.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path

from . import distributed
from .data import DATASETS, load_dataset
from .distill import METHOD_DEFAULTS, DistillConfig, distill
from .evaluate import EvalProtocol, evaluate, random_subset
from .synthetic import SyntheticSet

HELP = {
    "dataset": f"data set name: {', '.join(DATASETS)} (digits ships with scikit-learn, no download)",
    "method": "'dm' (a fresh random ConvNet per iteration) or 'idm' (partitioned images, a queue of ConvNets "
              "trained on real data, class-aware cross-entropy)",
    "ipc": "stored synthetic images per class (the storage budget, whatever the factor)",
    "iterations": "distillation iterations (the paper: 20000; a CPU budget: a few hundred)",
    "lr_img": "SGD learning rate on the synthetic pixels",
    "factor": "partitions per side: each stored image holds factor x factor tiles, each upsampled to a training "
              "image",
    "queue_length": "IDM: most nets in the model queue (the oldest is popped)",
    "queue_push_interval": "IDM: push a new random net every N iterations",
    "queue_train_nets": "IDM: nets of the queue trained after each image update",
    "queue_train_steps": "IDM: SGD steps per trained net per iteration",
    "queue_batch": "IDM: real images (all classes) per SGD step of a queue net",
    "queue_lr": "IDM: learning rate of the queue nets (momentum 0.9, weight decay 5e-4)",
    "ce_weight": "IDM: weight of the cross-entropy on the synthetic images, times the net's training accuracy "
                 "(a fraction; the authors' 0.5 x percent = 50)",
    "momentum": "SGD momentum on the synthetic pixels",
    "batch_real": "real images per class per iteration",
    "init": "initial synthetic images: random real images ('real') or Gaussian noise ('noise')",
    "dsa_strategy": "DSA families joined by '_' (one drawn per iteration), or 'none'",
    "model": "embedding network (convnet by default; see distill_lib.models.MODEL_NAMES)",
    "seed": "seed from which every random draw derives",
    "device": "'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ...",
    "checkpoint_every": "write the checkpoint every N iterations (0: only at the end and on Ctrl-C)",
    "real_chunk": "push the real batch through the net in chunks of N images (0: all at once)",
    "cc": "add class centralization (needs a pretrained feature net, cached after the first run)",
    "lambda_cc": "weight of the CC term (authors' code: 0.05 with DM, 0.01 with IDM)",
    "cc_form": "'simplified' (sum of squared distances, the authors' code) or 'paper' (exp hinge with alpha, beta)",
    "cm": "add covariance matching of local feature covariances",
    "lambda_cm": "weight of the CM term (authors' code: 0.01 with DM, 0.03 with IDM)",
    "epochs": "training epochs of each evaluation network (the papers: 1000)",
    "num_models": "how many fresh networks to train and test (mean ± std over them)",
    "dsa": "differentiable Siamese augmentation while training the evaluation networks",
    "compile": "torch.compile the evaluation networks: 'on', 'off', or 'auto' (on for long CPU runs)",
}


def _add_fields(parser: argparse.ArgumentParser, cls, prefix: str = "") -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + (prefix + f.name).replace("_", "-")  # "eval_" + "num_models" -> --eval-num-models
        if f.default is None:  # "X | None": None takes the method's default
            by_method = ", ".join(f"{m} {d[f.name]}" for m, d in METHOD_DEFAULTS.items() if f.name in d)
            default_text, kind = f"by method: {by_method}", next(t for t in typing.get_args(hints[f.name])
                                                                if t is not type(None))
        else:
            default_text, kind = f.default, type(f.default)
        help_text = HELP.get(f.name, f.name.replace("_", " ")) + f" (default: {default_text})"
        if isinstance(f.default, bool):
            parser.add_argument(flag, dest=prefix + f.name, action=argparse.BooleanOptionalAction,
                                default=f.default, help=help_text)
        else:
            parser.add_argument(flag, dest=prefix + f.name, type=kind, default=f.default, help=help_text)


def _build(cls, args: argparse.Namespace, prefix: str = ""):
    return cls(**{f.name: getattr(args, prefix + f.name) for f in dataclasses.fields(cls)})


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m distill_lib", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)

    d = sub.add_parser("distill", help="distill a data set into a synthetic set file",
                       description="Distill a data set with DM or IDM (optionally +CC, +CM) and save the synthetic "
                                   "set.")
    _add_fields(d, DistillConfig)
    _add_common(d)
    d.add_argument("--out", type=Path, help="output file (default: runs/<dataset>_ipc<ipc>_seed<seed>.pt)")
    d.add_argument("--checkpoint", type=Path, help="checkpoint file (written atomically; see --resume)")
    d.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")

    e = sub.add_parser("evaluate", help="train fresh networks on a synthetic set and test them",
                       description="Evaluate a saved synthetic set, or the random-real-subset baseline.")
    source = e.add_mutually_exclusive_group(required=True)
    source.add_argument("--syn", type=Path, help="a synthetic set saved by 'distill'")
    source.add_argument("--random-subset", type=int, metavar="IPC", help="baseline: IPC random real images per class")
    e.add_argument("--dataset", default="digits", help="data set of --random-subset (default: digits)")
    e.add_argument("--subset-seed", type=int, default=0, help="seed of --random-subset (default: 0)")
    _add_fields(e, EvalProtocol, "eval_")
    _add_common(e)

    r = sub.add_parser("run", help="distill, then evaluate next to the random-subset baseline (the main job)",
                       description="Distill with DM or IDM (+CC/CM if asked), evaluate, and print a table next to a "
                                   "random real subset of the same storage (IPC images per class). Defaults need no "
                                   "download.")
    _add_fields(r, DistillConfig)
    _add_fields(r, EvalProtocol, "eval_")
    _add_common(r)
    r.add_argument("--out", type=Path, help="where to save the synthetic set (default: runs/...)")
    return top


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", help="data folder (default: $DISTILL_DATA, else ./data)")
    p.add_argument("--download", action="store_true", help="allow torchvision to download missing data")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _default_out(config: DistillConfig) -> Path:
    method = "" if config.method == "dm" else f"_{config.method}"  # DM keeps the names it had before IDM
    return Path("runs") / f"{config.dataset}{method}_ipc{config.ipc}_seed{config.seed}.pt"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    progress = not args.no_progress
    if args.command == "evaluate":
        protocol = _build(EvalProtocol, args, "eval_")
        if args.syn is not None:
            syn = SyntheticSet.load(args.syn)
            dataset = syn.config.get("dataset", args.dataset)
        else:
            syn, dataset = None, args.dataset
        data = load_dataset(dataset, args.data_root, args.download)
        syn = syn or random_subset(data, args.random_subset, args.subset_seed)
        result = evaluate(syn, data, protocol, progress)
        if distributed.is_main():
            print(json.dumps({"dataset": dataset, "accuracy_mean": result.mean, "accuracy_std": result.std,
                              "accuracies": result.accuracies, "protocol": result.protocol}))
        return 0

    config = _build(DistillConfig, args)
    data = load_dataset(config.dataset, args.data_root, args.download)
    if args.command == "distill":
        syn = distill(config, data, args.checkpoint, args.resume, progress)
        if distributed.is_main():
            print(f"saved {syn.save(args.out or _default_out(config))}")
        return 0

    protocol = _build(EvalProtocol, args, "eval_")
    syn = distill(config, data, progress=progress)
    path = args.out or _default_out(config)
    if distributed.is_main():
        syn.save(path)
    rows = [("random real subset", evaluate(random_subset(data, config.ipc, config.seed), data, protocol, progress)),
            (config.label(), evaluate(syn, data, protocol, progress))]
    if not distributed.is_main():
        return 0
    print(f"\n{config.dataset}, IPC {config.ipc} (storage: {config.ipc} images per class; {syn.factor ** 2} training "
          f"images each), {config.iterations} iterations (synthetic set saved to {path})")
    print(f"evaluation: {protocol.describe()}")
    width = max(len(name) for name, _ in rows)
    for name, result in rows:
        print(f"  {name:<{width}}  {result}")
    return 0
