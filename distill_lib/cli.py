"""Command line: ``python -m distill_lib {distill,evaluate,run} --help``.

Options are generated from the fields of :class:`DistillConfig`, :class:`RunOptions` and :class:`EvalProtocol`
(evaluation options carry an ``--eval-`` prefix), so the CLI can never drift from the library. Every command also
runs under ``torchrun --nproc-per-node N -m distill_lib ...``: the work is split over the processes and only rank 0
writes files and prints results.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import typing
import warnings
from pathlib import Path

from . import distributed
from .data import DATASETS, DatasetNotFoundError, load_dataset
from .distill import INITS, MATCH_NETS, METHOD_DEFAULTS, METHODS, DistillConfig
from .evaluate import EvalProtocol, EvalResult, evaluate, random_subset
from .featnet import RECIPES
from .files import check_writable
from .losses import CC_FORMS
from .models import ACTIVATIONS, MODEL_NAMES, NORMS, POOLINGS
from .options import RunOptions
from .runner import Interrupted, distill
from .synthetic import SyntheticSet
from .train import COMPILE_MODES

HELP = {
    "dataset": f"data set name: {', '.join(DATASETS)} (digits ships with scikit-learn, no download)",
    "method": "'dm' (a fresh random ConvNet per iteration) or 'idm' (partitioned images, a queue of ConvNets "
              "trained on real data, class-aware cross-entropy)",
    "ipc": "stored synthetic images per class (the storage budget, whatever the factor)",
    "iterations": "distillation iterations (the paper: 20000; a CPU budget: a few hundred)",
    "lr_img": "SGD learning rate on the synthetic pixels",
    "lr_half_life": "halve lr_img every this many iterations (0: constant, as published)",
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
    "model": "embedding network",
    "seed": "seed from which every random draw derives",
    "device": "'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ...",
    "checkpoint_every": "write the checkpoint every N iterations (0: only at the end and on Ctrl-C)",
    "real_chunk": "push the real batch through the net in chunks of N images (0: all at once)",
    "cc": "add class centralization (needs a pretrained feature net, cached after the first run)",
    "lambda_cc": "weight of the CC term (DM: 0.001, chosen on CIFAR-10's validation split for the default 'convnet' "
                 "feature nets; the authors' 0.05 was set for a ResNet18; IDM: the authors' 0.01)",
    "cc_form": "'simplified' (sum of squared distances, the authors' code) or 'paper' (exp hinge with alpha, beta)",
    "cm": "add covariance matching of local feature covariances",
    "lambda_cm": "weight of the CM term (authors' code: 0.01 with DM, 0.03 with IDM)",
    "epochs": "training epochs of each evaluation network (the papers: 1000)",
    "num_models": "how many fresh networks to train and test (mean ± std over them)",
    "dsa": "differentiable Siamese augmentation while training the evaluation networks",
    "compile": "torch.compile DM's embedding net: 'on', 'off', or 'auto' (on for long CPU runs)",
    "featnet_arch": "CC: architecture of the pretrained feature net of --featnet-recipe default",
    "featnet_epochs": "CC: training epochs of each feature net, whatever its recipe (the authors' 'paper' nets: 40)",
    "featnet_per_class": "CC: training images per class of --featnet-recipe default's net (0: the whole set)",
    "featnet_recipe": "CC: how the feature nets are trained: 'convnet' (the default: the DM ConvNet on the full set, "
                      "no augmentation, step decay; 6 epochs, 75 %% on CIFAR-10, where CC gains with it), "
                      "'default' (the original: --featnet-arch on --featnet-per-class "
                      "images per class, DSA, step decay), 'paper' (the authors': ResNet18 on the full set, constant lr, no "
                      "augmentation; 40 epochs: --featnet-epochs 40); --featnet-epochs sets the length of any recipe",
    "match_net": "the net DM's mean matching (and CM) embeds with: 'random' (a fresh ConvNet each iteration, DM as "
                 "published) or 'featnet' (the pretrained feature net drawn that iteration, as for CC; the control "
                 "that separates CC's pull from a trained embedding)",
    "net_norm": "normalisation layers of the embedding ConvNet",
    "net_act": "activation of the embedding ConvNet",
    "net_pooling": "pooling of the embedding ConvNet",
}
# Evaluation fields (--eval-*) whose wording differs from the distillation field of the same name.
EVAL_HELP = {
    "model": "network trained on the set and tested",
    "compile": "torch.compile the evaluation networks: 'on', 'off', or 'auto' (on for long CPU runs)",
    "seed": "seed of the evaluation networks' initialisation, batch order and augmentation",
}
# Valid values of the name-valued fields: listed in --help and checked by argparse.
CHOICES = {"method": METHODS, "init": INITS, "model": MODEL_NAMES, "featnet_arch": MODEL_NAMES,
           "featnet_recipe": tuple(RECIPES), "match_net": MATCH_NETS, "net_norm": NORMS, "net_act": ACTIVATIONS,
           "net_pooling": POOLINGS, "cc_form": CC_FORMS, "compile": COMPILE_MODES}
# `run --first-look`: a first result in minutes on a laptop's CPU. Explicit flags still win.
FIRST_LOOK = {"iterations": 80, "batch_real": 128, "eval_epochs": 100, "eval_num_models": 2}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2), like every other error of the command line."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _add_fields(parser: argparse.ArgumentParser, cls, prefix: str = "", wording: dict | None = None) -> None:
    """A flag per field of the dataclass ``cls``; a field that is itself a dataclass (``DistillConfig.queue``) gets
    flat flags named after both (--queue-length), worded by HELP's entries of those names."""
    hints = typing.get_type_hints(cls)
    wording = {**HELP, **(wording or {})}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            nested = f"{f.name}_"
            _add_fields(parser, hints[f.name], prefix + nested,
                        {k[len(nested):]: v for k, v in wording.items() if k.startswith(nested)})
            continue
        flag = "--" + (prefix + f.name).replace("_", "-")  # "eval_" + "num_models" -> --eval-num-models
        if f.default is None:  # "X | None": None takes the method's default
            by_method = ", ".join(f"{m} {d[f.name]}" for m, d in METHOD_DEFAULTS.items() if f.name in d)
            default_text, kind = f"by method: {by_method}", next(t for t in typing.get_args(hints[f.name])
                                                                if t is not type(None))
        else:
            default_text, kind = f.default, type(f.default)
        help_text = wording.get(f.name, f.name.replace("_", " ")) + f" (default: {default_text})"
        if isinstance(f.default, bool):
            parser.add_argument(flag, dest=prefix + f.name, action=argparse.BooleanOptionalAction,
                                default=f.default, help=help_text)
        else:
            parser.add_argument(flag, dest=prefix + f.name, type=kind, default=f.default, help=help_text,
                                choices=CHOICES.get(f.name))


def _build(cls, args: argparse.Namespace, prefix: str = ""):
    """An instance of ``cls`` from the flags :func:`_add_fields` made for it (nested dataclasses included)."""
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: _build(hints[f.name], args, f"{prefix}{f.name}_") if dataclasses.is_dataclass(hints[f.name])
                  else getattr(args, prefix + f.name) for f in dataclasses.fields(cls)})


def parser(first_look: bool = False) -> argparse.ArgumentParser:
    """The command line; ``first_look``: the ``run`` defaults of ``--first-look`` (see FIRST_LOOK)."""
    top = _Parser(prog="python -m distill_lib", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)

    d = sub.add_parser("distill", help="distill a data set into a synthetic set file",
                       description="Distill a data set with DM or IDM (optionally +CC, +CM) and save the synthetic "
                                   "set.")
    _add_fields(d, DistillConfig)
    _add_fields(d, RunOptions)
    _add_common(d)
    d.add_argument("--out", type=Path, help="output file (default: runs/<dataset>_ipc<ipc>_seed<seed>.pt)")
    _add_checkpoint(d)

    e = sub.add_parser("evaluate", help="train fresh networks on a synthetic set and test them",
                       description="Evaluate a saved synthetic set, or the random-real-subset baseline.")
    source = e.add_mutually_exclusive_group(required=True)
    source.add_argument("--syn", type=Path, help="a synthetic set saved by 'distill'")
    source.add_argument("--random-subset", type=int, metavar="IPC", help="baseline: IPC random real images per class")
    e.add_argument("--dataset", default="digits", help="data set of --random-subset (default: digits)")
    e.add_argument("--subset-seed", type=int, default=0, help="seed of --random-subset (default: 0)")
    _add_fields(e, EvalProtocol, "eval_", EVAL_HELP)
    _add_common(e)
    e.add_argument("--json", action="store_true", help="print the result as one JSON line (fractions, not percent)")

    r = sub.add_parser("run", help="distill, then evaluate next to the random-subset baseline (the main job)",
                       description="Distill with DM or IDM (+CC/CM if asked), evaluate, and print a table next to a "
                                   "random real subset of the same storage (IPC images per class), with a picture "
                                   "of both. Defaults need no download.")
    _add_fields(r, DistillConfig)
    _add_fields(r, RunOptions)
    _add_fields(r, EvalProtocol, "eval_", EVAL_HELP)
    _add_common(r)
    r.add_argument("--out", type=Path, help="where to save the synthetic set (default: runs/...; its picture goes "
                                            "beside it as .png)")
    _add_checkpoint(r)
    r.add_argument("--first-look", action="store_true",
                   help="a first result in minutes: " + ", ".join(f"--{k.replace('_', '-')} {v}"
                                                                  for k, v in FIRST_LOOK.items())
                        + " unless given (the full budget: leave this flag out)")
    if first_look:
        r.set_defaults(**FIRST_LOOK)
    return top


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", help="data folder (default: $DISTILL_DATA, else ./data)")
    p.add_argument("--download", action="store_true", help="allow torchvision to download missing data")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_checkpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, help="checkpoint file of the distillation (written atomically at the "
                                                   "end, on Ctrl-C and every --checkpoint-every iterations)")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")


def _default_out(config: DistillConfig) -> Path:
    method = "" if config.method == "dm" else f"_{config.method}"  # DM: runs/<dataset>_ipc<ipc>_seed<seed>.pt
    return Path("runs") / f"{config.dataset}{method}_ipc{config.ipc}_seed{config.seed}.pt"


def _is_first_look_flag(arg: str) -> bool:
    return len(arg) > 3 and "--first-look".startswith(arg)  # argparse accepts any unique prefix


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    if getattr(args, "first_look", False):  # again, with the first look's defaults under the flags given
        args = parser(first_look=True).parse_args(argv)
    args.full_budget = "python -m distill_lib " + shlex.join(a for a in argv if not _is_first_look_flag(a))
    shown = warnings.formatwarning
    warnings.formatwarning = _one_line_warning  # a user reads the message, not the library's source line
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="interrupted at iteration")  # said by the error line
            return _dispatch(args)
    except DatasetNotFoundError as err:
        print(f"error: {err.advice('--data-root', '--download')}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as err:  # every bad input and bad file: BadFileError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"error: {err or 'interrupted'}", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = shown


def _dispatch(args: argparse.Namespace) -> int:
    progress = not args.no_progress
    if args.command == "evaluate":
        return _evaluate(args, progress)
    config = _build(DistillConfig, args)
    protocol = _build(EvalProtocol, args, "eval_") if args.command == "run" else None
    if args.resume and args.checkpoint is None:
        raise ValueError("--resume needs --checkpoint FILE")
    out = args.out or _default_out(config)
    for path in (out, args.checkpoint, out.with_suffix(".png") if args.command == "run" else None):
        if path is not None and distributed.is_main():
            check_writable(path)  # now, not after the distillation
    data = load_dataset(config.dataset, args.data_root, args.download)
    if args.command == "run" and args.first_look:
        print(f"first look: {config.iterations} iterations, evaluation {protocol.epochs} epochs x "
              f"{protocol.num_models} networks (the full budget: {args.full_budget})", file=sys.stderr)
    syn = distill(config, data, args.checkpoint, args.resume, progress, _build(RunOptions, args))
    if distributed.is_main():
        syn.save(out)
    if args.command == "distill":
        if distributed.is_main():
            print(f"saved {out}")
        return 0
    baseline = random_subset(data, config.ipc, config.seed)
    try:
        rows = [("random real subset", baseline, evaluate(baseline, data, protocol, progress)),
                (config.label(), syn, evaluate(syn, data, protocol, progress))]
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted while evaluating; the synthetic set is saved in {out} (evaluate it alone: "
                          f"python -m distill_lib evaluate --syn {out})") from None
    if not distributed.is_main():
        return 0
    picture = _save_picture(out.with_suffix(".png"), [(f"{name}: {result}", s) for name, s, result in rows])
    tiles = f"; each holds {syn.factor ** 2} training images" if syn.factor > 1 else ""
    print(f"\n{config.dataset}, IPC {config.ipc} (storage: {config.ipc} images per class{tiles}), "
          f"{config.iterations} iterations (synthetic set saved to {out})")
    print(f"evaluation: {protocol.describe()}")
    _print_table([(name, result) for name, _, result in rows])
    print(f"picture of both sets: {picture}")
    if args.first_look:
        print(f"this was a first look; the full budget (defaults: {DistillConfig.iterations} iterations, "
              f"{EvalProtocol.epochs} evaluation epochs x {EvalProtocol.num_models} networks; far slower): "
              f"{args.full_budget}")
    return 0


def _evaluate(args: argparse.Namespace, progress: bool) -> int:
    protocol = _build(EvalProtocol, args, "eval_")
    if args.syn is not None:
        syn = SyntheticSet.load(args.syn)
        dataset = syn.config.get("dataset", args.dataset)
    else:
        syn, dataset = None, args.dataset
    data = load_dataset(dataset, args.data_root, args.download)
    syn = syn or random_subset(data, args.random_subset, args.subset_seed)
    result = evaluate(syn, data, protocol, progress)
    if not distributed.is_main():
        return 0
    if args.json:
        print(json.dumps({"dataset": dataset, "accuracy_mean": result.mean, "accuracy_std": result.std,
                          "accuracies": result.accuracies, "protocol": result.protocol}))
        return 0
    name = str(args.syn) if args.syn is not None else f"random real subset (IPC {args.random_subset})"
    print(f"{dataset}, evaluation: {protocol.describe()}")
    _print_table([(name, result)])
    return 0


def _print_table(rows: list[tuple[str, EvalResult]]) -> None:
    width = max(len(name) for name, _ in rows)
    for name, result in rows:
        print(f"  {name:<{width}}  {result}")


def _save_picture(path: Path, sets: list[tuple[str, SyntheticSet]]) -> Path:
    """One PNG with the stored images of each set side by side (a column per class, a row per image of it)."""
    from matplotlib.figure import Figure  # no pyplot: no display, no backend to choose
    from torchvision.utils import make_grid

    figure = Figure(figsize=(5 * len(sets), 5.4), layout="constrained")
    for axes, (title, syn) in zip(figure.subplots(1, len(sets), squeeze=False)[0], sets):
        images = syn.for_display().unflatten(0, (syn.num_classes, syn.ipc)).transpose(0, 1).flatten(0, 1)
        grid = make_grid(images, nrow=syn.num_classes, padding=1, pad_value=1.0)
        axes.imshow(grid.permute(1, 2, 0).numpy(), cmap="gray" if images.shape[1] == 1 else None)
        axes.set_title(title, fontsize=10)
        axes.set_axis_off()
    figure.savefig(path, dpi=100)
    return path
