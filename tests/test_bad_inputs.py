"""Every bad input a new user can give the command line, one row each: input -> exit code and one error line.

Bad files (truncated, random bytes, the wrong kind, a malicious pickle, non-finite pixels), unwritable outputs,
non-finite hyper-parameters, a run whose loss goes NaN, Ctrl-C, and a kill in the middle of a checkpoint write. Rows
run in-process through ``main([...])``; only the kill needs a real process. Each row also checks that nothing was
left behind: no traceback, no output file, no temporary.
"""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import interrupt_step_at

import distill_lib.cli as cli
from distill_lib.cache import DiskCache
from distill_lib.cli import main
from distill_lib.data import load_dataset
from distill_lib.distill import Distiller
from distill_lib.runner import read_checkpoint
from distill_lib.featnet import FeatNetSpec, cache_key
from distill_lib.synthetic import SyntheticSet

TINY = ["--dataset", "digits", "--iterations", "4", "--ipc", "1", "--batch-real", "4", "--net-width", "4",
        "--device", "cpu", "--no-progress"]
TINY_EVAL = ["--eval-epochs", "1", "--eval-num-models", "1", "--eval-model", "mlp", "--eval-device", "cpu",
             "--no-progress"]


class Evil:
    """Unpickling this would call print: weights-only loading must refuse it before that."""

    def __reduce__(self):
        return print, ("unpickled and ran code",)


@pytest.fixture(autouse=True)
def work(tmp_path, monkeypatch):
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setenv("DISTILL_DATA", str(tmp_path / "data"))  # empty: digits comes from scikit-learn
    return folder


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A finished tiny run: its checkpoint and its synthetic set (read-only for the rows)."""
    folder = tmp_path_factory.mktemp("made")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILL_CACHE", str(folder / "cache"))
        assert main(["distill", *TINY, "--out", str(folder / "syn.pt"), "--checkpoint", str(folder / "ck.pt")]) == 0
    return folder


def truncated(source: Path, target: Path) -> Path:
    target.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    return target


def npz_of_digits(path: Path) -> Path:
    d = load_dataset("digits")
    np.savez(path, x_train=d.x_train.numpy(), y_train=d.y_train.numpy(), x_test=d.x_test.numpy(),
             y_test=d.y_test.numpy(), classes=np.array(d.classes))
    return path


def nan_set(made: Path, target: Path) -> Path:
    syn = SyntheticSet.load(made / "syn.pt")
    syn.images[0, 0, 3, 3] = float("nan")
    return syn.save(target)


def featnet_entry_for_another_net() -> None:
    """A feature-net cache entry at the right key holding weights of no ResNet18 (a foreign or damaged entry)."""
    spec = FeatNetSpec(epochs=1, per_class=2, seed=0)
    DiskCache("featnet").put(cache_key(load_dataset("digits"), spec), {"state_dict": {"w": torch.zeros(2)},
                                                                        "accuracy": 0.5})


def nan_from_iteration_2(monkeypatch) -> None:
    """A loss term that goes NaN at iteration 2 (as a diverging run's would)."""
    real = Distiller.loss_terms

    def loss_terms(self, iteration):
        terms = real(self, iteration)
        if iteration == 2:
            terms["dm"] = terms["dm"] * float("nan")
        return terms

    monkeypatch.setattr(Distiller, "loss_terms", loss_terms)


def ctrl_c_while_evaluating(monkeypatch) -> None:
    def evaluate(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "evaluate", evaluate)


# (id, argv with {made} and {work} placeholders, setup(made, work, monkeypatch) or None, exit code, fragments)
ROWS = [
    ("truncated npz", ["evaluate", "--random-subset", "1", "--dataset", "mnist", "--data-root", "{work}", *TINY_EVAL],
     lambda made, work, mp: truncated(npz_of_digits(work / "full.npz"), work / "mnist.npz"), 2,
     ["mnist.npz: is not an .npz archive"]),
    ("random-bytes npz", ["evaluate", "--random-subset", "1", "--dataset", "mnist", "--data-root", "{work}",
                          *TINY_EVAL],
     lambda made, work, mp: (work / "mnist.npz").write_bytes(os.urandom(4096)), 2, ["is not an .npz archive"]),
    ("npz lacking arrays", ["evaluate", "--random-subset", "1", "--dataset", "mnist", "--data-root", "{work}",
                            *TINY_EVAL],
     lambda made, work, mp: np.savez(work / "mnist.npz", x_train=np.zeros((2, 1, 4, 4), np.uint8)), 2,
     ["lacks arrays ['y_train', 'x_test', 'y_test', 'classes']"]),
    ("missing data", ["distill", *TINY, "--dataset", "cifar10"], None, 2,
     ["dataset 'cifar10' not found", "(--data-root, else $DISTILL_DATA", "--download with internet access"]),
    ("--out under a regular file", ["distill", *TINY, "--out", "{work}/file/out.pt"],
     lambda made, work, mp: (work / "file").write_text("x"), 2,
     ["out.pt: cannot be written (", "file is a file, not a folder)"]),
    ("--out is a folder", ["run", *TINY, *TINY_EVAL, "--out", "{work}"], None, 2, ["is a folder"]),
    ("--checkpoint under a regular file", ["distill", *TINY, "--checkpoint", "{work}/file/ck.pt"],
     lambda made, work, mp: (work / "file").write_text("x"), 2, ["ck.pt: cannot be written"]),
    ("--resume truncated checkpoint", ["distill", *TINY, "--checkpoint", "{work}/ck.pt", "--resume"],
     lambda made, work, mp: truncated(made / "ck.pt", work / "ck.pt"), 2,
     ["ck.pt: is not a readable distillation checkpoint"]),
    ("--resume malicious pickle", ["distill", *TINY, "--checkpoint", "{work}/ck.pt", "--resume"],
     lambda made, work, mp: (work / "ck.pt").write_bytes(pickle.dumps({"config": Evil()})), 2,
     ["ck.pt: is not a distillation checkpoint: safe (weights-only) loading refused it"]),
    ("--resume malicious torch file", ["distill", *TINY, "--checkpoint", "{work}/ck.pt", "--resume"],
     lambda made, work, mp: torch.save({"config": Evil()}, work / "ck.pt"), 2,
     ["refused it (Unsupported global: GLOBAL"]),
    ("--resume given a synthetic set", ["distill", *TINY, "--checkpoint", "{made}/syn.pt", "--resume"], None, 2,
     ["syn.pt: is a saved synthetic set, not a checkpoint"]),
    ("--resume of another config", ["distill", *TINY, "--ipc", "2", "--checkpoint", "{work}/ck.pt", "--resume"],
     lambda made, work, mp: (work / "ck.pt").write_bytes((made / "ck.pt").read_bytes()), 2,
     ["differing fields: ipc (checkpoint 1, now 2)"]),
    ("--resume without --checkpoint", ["distill", *TINY, "--resume"], None, 2, ["--resume needs --checkpoint"]),
    ("evaluate a checkpoint", ["evaluate", "--syn", "{made}/ck.pt", *TINY_EVAL], None, 2,
     ["ck.pt: is a distillation checkpoint, not a synthetic set"]),
    ("evaluate a truncated set", ["evaluate", "--syn", "{work}/syn.pt", *TINY_EVAL],
     lambda made, work, mp: truncated(made / "syn.pt", work / "syn.pt"), 2, ["syn.pt: is not a readable synthetic"]),
    ("evaluate a set with NaN pixels", ["evaluate", "--syn", "{work}/nan.pt", *TINY_EVAL],
     lambda made, work, mp: nan_set(made, work / "nan.pt"), 2, ["nan.pt: holds 1 non-finite pixel values"]),
    ("feature-net cache entry of another net", ["distill", *TINY, "--ipc", "2", "--cc", "--featnet-recipe", "default",
                                                "--featnet-epochs", "1", "--featnet-per-class", "2"],
     lambda made, work, mp: featnet_entry_for_another_net(), 2, ["holds no resnet18 feature net for 'digits'",
                                                                     "delete it to retrain"]),
    ("--lr-img nan", ["distill", *TINY, "--lr-img", "nan"], None, 2, ["lr_img must be a finite number, got nan"]),
    ("--eval-lr inf", ["run", *TINY, *TINY_EVAL, "--eval-lr", "inf"], None, 2, ["lr must be a finite number"]),
    ("--model unknown", ["distill", *TINY, "--model", "resnet99"], None, 2, ["invalid choice: 'resnet99'"]),
    ("--ipc not a number", ["distill", *TINY, "--ipc", "ten"], None, 2, ["invalid int value: 'ten'"]),
    ("loss NaN mid-run, no checkpoint", ["distill", *TINY], lambda made, work, mp: nan_from_iteration_2(mp), 2,
     ["iteration 2: loss term 'dm' is nan; stopped (no checkpoint was kept"]),
    ("loss NaN mid-run, checkpoint", ["distill", *TINY, "--checkpoint", "{work}/ck.pt"],
     lambda made, work, mp: nan_from_iteration_2(mp), 2,
     ["iteration 2: loss term 'dm' is nan; stopped (the last finite state (iteration 2) is saved in"]),
    ("absurd lr_img", ["distill", *TINY, "--lr-img", "1e38"], None, 2, ["iteration ", "stopped"]),
    ("Ctrl-C with a checkpoint", ["distill", *TINY, "--checkpoint", "{work}/ck.pt"],
     lambda made, work, mp: interrupt_step_at(mp, 2), 130,
     ["interrupted at iteration 2; state saved to", "ck.pt: run the same command with resume (--resume)"]),
    ("Ctrl-C while evaluating", ["run", *TINY, *TINY_EVAL, "--out", "{work}/syn.pt"],
     lambda made, work, mp: ctrl_c_while_evaluating(mp), 130,
     ["interrupted while evaluating; the synthetic set is saved in", "python -m distill_lib evaluate --syn"]),
    ("Ctrl-C without a checkpoint", ["distill", *TINY], lambda made, work, mp: interrupt_step_at(mp, 2), 130,
     ["interrupted at iteration 2; nothing saved"]),
]


@pytest.mark.parametrize("argv, setup, code, fragments", [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_bad_input_is_one_line(argv, setup, code, fragments, made, work, monkeypatch, capsys):
    if setup is not None:
        setup(made, work, monkeypatch)
    before = sorted(p.name for p in work.iterdir())
    try:
        got = main([a.format(made=made, work=work) for a in argv])
    except SystemExit as exit:  # argparse's own checks (after printing their one line)
        got = exit.code
    out, err = capsys.readouterr()
    assert got == code, err
    assert err.startswith("error: ") and "Traceback" not in err and "download=True" not in err.split("\n  - ")[0]
    if "not found. Tried:" not in err:  # the one multi-line message: the places tried and the ways to fix it
        assert len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err
    assert "allow_pickle" not in err and "unpickled and ran code" not in out
    # Nothing half-written: no output set, no temporaries; only a checkpoint the message points to.
    after = sorted(p.name for p in work.iterdir())
    assert not os.path.exists("runs") and not [name for name in after if ".tmp" in name]
    kept = {name for name in ("ck.pt", "syn.pt") if name in err}  # files the message points to
    assert set(after) - set(before) <= kept


def test_nan_mid_run_checkpoint_holds_the_last_finite_state(work, monkeypatch, capsys):
    nan_from_iteration_2(monkeypatch)
    assert main(["distill", *TINY, "--checkpoint", str(work / "ck.pt")]) == 2
    state = read_checkpoint(work / "ck.pt")
    assert state["iteration"] == 2 and len(state["history"]) == 2 and torch.isfinite(state["images"]).all()
    monkeypatch.undo()  # the same run, resumed without the fault, finishes
    capsys.readouterr()
    assert main(["distill", *TINY, "--checkpoint", str(work / "ck.pt"), "--resume", "--out", "x.pt"]) == 0
    assert len(SyntheticSet.load("x.pt").history) == 4


KILL_DURING_WRITE = textwrap.dedent("""
    import os, signal, sys
    import torch
    import distill_lib.files as files
    from distill_lib.cli import main

    real_save = torch.save

    def half_then_killed(obj, f):  # the process dies with half the bytes of the new checkpoint written
        real_save(obj, f)
        f.flush()
        f.truncate(f.tell() // 2)
        os.kill(os.getpid(), signal.SIGKILL)

    files.torch.save = half_then_killed
    print(os.getpid(), flush=True)
    main(sys.argv[1:])
""")


def test_kill_during_a_checkpoint_write_keeps_the_previous_checkpoint(made, work, capsys):
    checkpoint = work / "ck.pt"
    checkpoint.write_bytes((made / "ck.pt").read_bytes())
    before = checkpoint.read_bytes()
    argv = [*TINY, "--iterations", "6", "--checkpoint", str(checkpoint), "--resume", "--out", str(work / "x.pt")]
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_WRITE, "distill", *argv], cwd=work, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    leftovers = [p.name for p in work.iterdir() if p.name.startswith(".ck.pt.tmp")]
    assert leftovers == [f".ck.pt.tmp{proc.stdout.split()[0]}"]  # what a kill leaves behind
    assert checkpoint.read_bytes() == before and read_checkpoint(checkpoint)["iteration"] == 4
    # The next start removes the dead writer's temporary and resumes from the intact checkpoint.
    assert main(["distill", *argv]) == 0
    assert not [p for p in work.iterdir() if ".tmp" in p.name]
    assert read_checkpoint(checkpoint)["iteration"] == 6
    assert len(SyntheticSet.load(work / "x.pt").history) == 6


def test_outputs_are_checked_before_any_work(work, monkeypatch):
    (work / "file").write_text("x")
    monkeypatch.setattr(cli, "distill", lambda *a, **k: pytest.fail("distilled before checking the output"))
    monkeypatch.setattr(cli, "load_dataset", lambda *a, **k: pytest.fail("loaded data before checking the output"))
    assert main(["run", *TINY, *TINY_EVAL, "--out", str(work / "file" / "x.pt")]) == 2
    assert main(["distill", *TINY, "--checkpoint", str(work / "file" / "ck.pt")]) == 2
