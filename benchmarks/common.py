"""What every benchmark script shares: the budget flags, the thread count, where the data is, printing once, and
the results file each one writes (results/<benchmark>.json and .md) from the markdown tables it printed."""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shlex
import sys
import typing
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distill_lib import EvalProtocol, course, distributed  # noqa: E402  (imported from this checkout, found through the line above)
from distill_lib.course import git_state, parse_tables  # noqa: E402  (shared with the course, which reads results back)


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
    results_flags(p)
    return p


def results_flags(p: argparse.ArgumentParser) -> None:
    """--results-dir and --results-tag: where write_results puts the run's results file."""
    p.add_argument("--results-dir", type=Path, default=Path(os.environ.get("DISTILL_RESULTS", REPO / "results")),
                   help="where results/<benchmark>.json and .md are written (default $DISTILL_RESULTS or results/)")
    p.add_argument("--results-tag", default="",
                   help="write results/<benchmark>.<TAG>.json and .md instead: a run kept beside the benchmark's "
                        "other runs (e.g. one row of cc_gain's table, too long to measure with the others at once)")


# Evaluation epochs of a validation cell unless --val-epochs says otherwise: benchmarks/fast_eval.py found that 300
# epochs rank synthetic sets as the papers' 1000 do, at a third of the seconds (docs/speed.md).
VALIDATION_EPOCHS = 300


def validation_flags(p: argparse.ArgumentParser) -> None:
    """--validation, --val-models and --val-epochs: where hyper-parameters are chosen (held-out training images,
    never the test set), with how many evaluation nets per candidate and how many epochs each."""
    p.add_argument("--validation", type=int, default=500, help="held-out training images per class for choosing")
    p.add_argument("--val-models", type=int, default=1, help="evaluation nets per validation cell")
    p.add_argument("--val-epochs", type=int, default=None,
                   help=f"evaluation epochs of a validation cell (default {VALIDATION_EPOCHS}, or --eval-epochs if "
                        "fewer: the protocol benchmarks/fast_eval.py checked against 1000 epochs)")


def validation_protocol(args: argparse.Namespace, protocol: EvalProtocol) -> EvalProtocol:
    """The protocol of the validation cells: ``protocol`` with --val-models nets and --val-epochs epochs (default
    ``VALIDATION_EPOCHS``, never more than the test protocol's)."""
    epochs = args.val_epochs or min(VALIDATION_EPOCHS, protocol.epochs)
    return replace(protocol, num_models=args.val_models, epochs=epochs)


BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def named_fields(text: str, cls, reserved: tuple[str, ...] = ()) -> tuple[str, dict]:
    """``NAME:field=value,...`` as (NAME, {field: value}) with each value converted to the type of that field of
    dataclass ``cls`` (bool, int, float, str, or one of them or None); ``reserved`` fields may not be set."""
    types = typing.get_type_hints(cls)
    name, _, body = text.partition(":")
    if not name:
        raise argparse.ArgumentTypeError(f"setting {text!r} has no name")
    fields = {}
    for item in filter(None, body.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in types or key in reserved:
            raise argparse.ArgumentTypeError(f"setting {text!r}: {item!r} is not field=value of a {cls.__name__} field"
                                             + (f" other than {', '.join(reserved)}" if reserved else ""))
        fields[key] = _typed(types[key], value, text)
    return name, fields


def _typed(kind, value: str, text: str):
    options = typing.get_args(kind) or (kind,)
    if bool in options and value.lower() in BOOLEANS:
        return BOOLEANS[value.lower()]
    for option in (int, float, str) if bool not in options else ():
        if option in options:
            try:
                return option(value)
            except ValueError:
                continue
    raise argparse.ArgumentTypeError(f"setting {text!r}: {value!r} is not a {kind}")


def say(*args, **kwargs) -> None:
    """print on rank 0 only, so a torchrun job prints each line once (call after joining the process group)."""
    if distributed.is_main():
        print(*args, **kwargs)


def setup(args: argparse.Namespace) -> None:
    """Start recording what is printed (for write_results), apply --threads and point $DISTILL_DATA, when unset, at
    the data folder the course finds (course.data_root)."""
    record_output()
    if args.threads:
        torch.set_num_threads(args.threads)
    course.export_data_root(REPO)


# ------------------------------------------------------------------------------------------------------------
# Results files. A benchmark prints its tables as markdown; write_results turns exactly what was printed into
# results/<benchmark>.json (the tables as data, the protocol, the command, date, commit) and a rendered .md, so the
# file and the screen cannot differ.

class _Tee:
    """sys.stdout that also keeps what was written."""

    def __init__(self, stream):
        self.stream, self.kept = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.kept.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):  # fileno, isatty, encoding, ...: the real stream's
        return getattr(self.stream, name)


def record_output() -> None:
    """Keep a copy of everything printed from now on (idempotent)."""
    if not isinstance(sys.stdout, _Tee):
        sys.stdout = _Tee(sys.stdout)


def printed() -> str:
    """What was printed since record_output()."""
    return sys.stdout.kept.getvalue() if isinstance(sys.stdout, _Tee) else ""


def command(name: str, argv: list[str]) -> str:
    """The command line that reproduces benchmarks/<name>.py run with ``argv`` (with torchrun and OMP_NUM_THREADS
    when they were used)."""
    prefix = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launcher = f"torchrun --nproc_per_node {world}" if world > 1 else "python"
    return f"{prefix}{launcher} {shlex.join([f'benchmarks/{name}.py', *argv])}"


def write_results(name: str, args: argparse.Namespace, protocol: str | None = None,
                  argv: list[str] | None = None, script: str | None = None) -> Path | None:
    """Write results/<name>.json and .md (in ``args.results_dir``; <name>.<tag> with ``args.results_tag``, the
    run kept beside the benchmark's others: course.measured_runs) from the tables printed so far. ``protocol`` is
    the budget line the benchmark printed; without it, the lines printed before the first table. ``argv``: the
    arguments main() parsed (default sys.argv[1:]); ``script``: the benchmark that ran, when it is not <name>.py.
    Rank 0 only; returns the .json path (None on other ranks)."""
    if not distributed.is_main():
        return None
    tables, notes = parse_tables(printed())
    if protocol is None:
        before = printed().split("\n|", 1)[0]
        protocol = " ".join(line.strip() for line in before.splitlines() if line.strip() and line[0] != "#")
    notes = [line for line in notes if line not in protocol]
    commit, dirty = git_state()
    record = {"benchmark": name, "command": command(script or name, sys.argv[1:] if argv is None else argv),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": commit, "dirty": dirty,
              "environment": {"python": platform.python_version(), "torch": torch.__version__,
                              "cpus": os.cpu_count(), "processes": distributed.world_size(),
                              "threads": torch.get_num_threads(),
                              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
              "protocol": protocol.strip(), "tables": tables, "notes": notes}
    folder = Path(args.results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    tag = getattr(args, "results_tag", "")
    path = folder / f"{name}.{tag}.json" if tag else folder / f"{name}.json"
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(render(record), encoding="utf-8")
    print(f"\nResults: {path} and {path.with_suffix('.md').name}", file=sys.stderr)
    return path


def render(record: dict) -> str:
    """A results record as markdown: command, date, commit, protocol, then each table under its title."""
    state = course.commit_text(record["commit"], record["dirty"])
    gpu = record.get("environment", {}).get("gpu")
    out = [f"# {record['benchmark']}", "", f"Command: `{record['command']}`", "",
           f"Measured {record['date']} at commit {state}{f', on an {gpu}' if gpu else ''}.", "",
           f"Protocol: {record['protocol']}", ""]
    for table in record["tables"]:
        if table["title"]:
            out += [f"## {table['title']}", ""]
        out += [*course.markdown_table(table), ""]
    if record["notes"]:
        out += ["## Other output", "", "```", *record["notes"], "```", ""]
    return "\n".join(out)
