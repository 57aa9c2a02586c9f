"""Tests for the command line (distill_lib.cli): help, the three commands on digits with tiny settings, bad input.

Commands run in-process through ``main([...])`` (fast), plus two subprocesses through ``python -m distill_lib`` to
check the real entry point's exit codes. The working directory, DISTILL_DATA and DISTILL_CACHE are temporary.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import pytest
import torch

from distill_lib import cli
from distill_lib.cache import canonical
from distill_lib.cli import main, parser
from distill_lib.data import load_dataset
from distill_lib.distill import DistillConfig
from distill_lib.evaluate import EvalProtocol
from distill_lib.models import ACTIVATIONS, MODEL_NAMES, NORMS
from distill_lib.options import RunOptions
from distill_lib.synthetic import SyntheticSet

TINY_DISTILL = ["--dataset", "digits", "--iterations", "3", "--ipc", "2", "--batch-real", "8", "--net-width", "8",
                "--device", "cpu", "--no-progress"]
TINY_EVAL = ["--eval-epochs", "2", "--eval-num-models", "1", "--eval-model", "mlp", "--eval-device", "cpu"]



@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One empty data folder for the module, so the in-process digits copy is loaded once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch, data_dir):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # a forgotten --out would land here, not in the repository
    monkeypatch.setenv("DISTILL_DATA", str(data_dir))
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    return work


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, data_dir):
    """A synthetic set written by ``distill`` with tiny settings, and what the command printed."""
    out = tmp_path_factory.mktemp("distilled") / "x.pt"
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout):
        mp.setenv("DISTILL_DATA", str(data_dir))
        mp.setenv("DISTILL_CACHE", str(tmp_path_factory.mktemp("cache")))
        code = main(["distill", *TINY_DISTILL, "--out", str(out)])
    return code, stdout.getvalue(), out


def run_main(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def subprocess_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ------------------------------------------------------------------------------------------------ help

@pytest.mark.parametrize("argv, expected", [
    ([], ["distill", "evaluate", "run"]),
    (["distill"], ["--dataset", "--ipc", "--iterations", "--batch-real", "--net-width", "--lr-img", "--init",
                   "--cc", "--cm", "--out", "--checkpoint", "--resume", "--data-root", "--download",
                   "--no-progress", "digits", "cifar10", "--device", "--compile", "--real-chunk",
                   "--checkpoint-every"]),
    (["evaluate"], ["--syn", "--random-subset", "--dataset", "--subset-seed", "--eval-epochs", "--eval-num-models",
                    "--eval-model", "--eval-lr", "--eval-dsa", "--no-eval-dsa", "--eval-seed", "--data-root"]),
    (["run"], ["--dataset", "--ipc", "--iterations", "--cc", "--cm", "--eval-epochs", "--eval-num-models", "--out",
               "--no-progress", "--device", "--compile", "--real-chunk", "--checkpoint-every", "--eval-device",
               "--eval-compile"]),
])
def test_help_exits_0_and_names_the_options(argv, expected, capsys):
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m distill_lib")
    for option in expected:
        assert option in out, option


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: 10)" in out and "(default: 300)" in out  # ipc, eval epochs


def test_module_entry_point_help():
    proc = subprocess.run([sys.executable, "-m", "distill_lib", "--help"], capture_output=True, text=True,
                          env=subprocess_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: python -m distill_lib" in proc.stdout
    assert all(cmd in proc.stdout for cmd in ("distill", "evaluate", "run"))


def test_a_command_is_required(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_run_option_flags_reach_run_options_not_the_config(monkeypatch, tmp_path):
    """--device, --compile, --real-chunk and --checkpoint-every stay flat flags; they reach distill() as RunOptions
    and leave the config (what is computed, and what the saved set records) as it is without them."""
    calls = []
    real_distill = cli.distill

    def recording(config, data, checkpoint, resume, progress, options):
        calls.append((config, options))
        return real_distill(config, data, checkpoint, resume, progress, options)

    monkeypatch.setattr(cli, "distill", recording)
    out = tmp_path / "syn.pt"
    argv = ["distill", *TINY_DISTILL, "--compile", "off", "--real-chunk", "0", "--checkpoint-every", "2",
            "--checkpoint", str(tmp_path / "ck.pt"), "--out", str(out)]
    assert main(argv) == 0
    (config, options), = calls
    assert options == RunOptions(device="cpu", compile="off", real_chunk=0, checkpoint_every=2)
    assert config == DistillConfig(dataset="digits", iterations=3, ipc=2, batch_real=8, net_width=8)
    assert SyntheticSet.load(out).config == canonical(config)
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["distill", *TINY_DISTILL, "--checkpoint-every", "2", "--out", str(out)]) == 2
    assert "checkpoint_every > 0 needs a checkpoint path" in err.getvalue()


# ------------------------------------------------------------------------------------------------ distill

def test_distill_writes_a_loadable_synthetic_set(distilled, digits):
    code, stdout, out = distilled
    assert code == 0
    assert stdout.strip() == f"saved {out}"
    syn = SyntheticSet.load(out)
    assert syn.images.shape == (20, 1, 16, 16) and syn.images.dtype == torch.float32
    assert torch.equal(syn.labels, torch.arange(10).repeat_interleave(2))
    assert syn.mean == digits.mean and syn.std == digits.std and syn.classes == digits.classes
    assert syn.config["dataset"] == "digits" and syn.config["iterations"] == 3 and syn.config["ipc"] == 2
    assert syn.config["net_width"] == 8 and syn.config["batch_real"] == 8
    assert [h["iteration"] for h in syn.history] == [0, 1, 2]
    assert torch.isfinite(syn.images).all()


def test_distill_default_output_path(capsys, _isolated):
    code, out, _ = run_main(["distill", *TINY_DISTILL, "--iterations", "1", "--seed", "3"], capsys)
    assert code == 0
    path = _isolated / "runs" / "digits_ipc2_seed3.pt"
    assert path.exists() and out.strip() == f"saved {os.path.join('runs', 'digits_ipc2_seed3.pt')}"
    assert len(SyntheticSet.load(path).history) == 1


# ------------------------------------------------------------------------------------------------ evaluate

def test_evaluate_a_saved_set(distilled, capsys):
    _, _, out = distilled
    code, stdout, _ = run_main(["evaluate", "--syn", str(out), *TINY_EVAL, "--no-progress", "--json"], capsys)
    assert code == 0
    result = last_json(stdout)
    assert result["dataset"] == "digits"
    assert 0.0 <= result["accuracy_mean"] <= 1.0
    assert len(result["accuracies"]) == 1 and result["accuracy_mean"] == result["accuracies"][0]
    assert result["accuracy_std"] == 0.0
    assert result["protocol"]["epochs"] == 2 and result["protocol"]["num_models"] == 1
    assert result["protocol"]["model"] == "mlp"


def test_evaluate_random_subset(capsys):
    code, stdout, _ = run_main(["evaluate", "--random-subset", "2", "--dataset", "digits", *TINY_EVAL,
                                "--eval-num-models", "2", "--eval-seed", "4", "--no-progress", "--json"], capsys)
    assert code == 0
    result = last_json(stdout)
    assert len(result["accuracies"]) == 2 and result["protocol"]["seed"] == 4
    assert result["accuracy_mean"] == pytest.approx(sum(result["accuracies"]) / 2)
    # The same command gives the same numbers.
    code, again, _ = run_main(["evaluate", "--random-subset", "2", "--dataset", "digits", *TINY_EVAL,
                               "--eval-num-models", "2", "--eval-seed", "4", "--no-progress", "--json"], capsys)
    assert last_json(again)["accuracies"] == result["accuracies"]
    # Without --json: the same numbers as a table in percent, as 'run' prints them.
    code, table, _ = run_main(["evaluate", "--random-subset", "2", "--dataset", "digits", *TINY_EVAL,
                               "--eval-num-models", "2", "--eval-seed", "4", "--no-progress"], capsys)
    mean, std = 100 * result["accuracy_mean"], 100 * result["accuracy_std"]
    assert code == 0 and table.splitlines()[0].startswith("digits, evaluation: mlp, 2 epochs")
    assert table.splitlines()[1].split() == ["random", "real", "subset", "(IPC", "2)", f"{mean:.2f}", "±",
                                             f"{std:.2f}", "%"]


def test_evaluate_needs_exactly_one_source(distilled, capsys):
    with pytest.raises(SystemExit) as info:
        main(["evaluate", *TINY_EVAL])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--syn", str(distilled[2]), "--random-subset", "2"])
    assert info.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ run

def test_run_prints_both_rows(capsys, _isolated):
    out = _isolated / "syn.pt"
    code, stdout, _ = run_main(["run", *TINY_DISTILL, *TINY_EVAL, "--cm", "--out", str(out)], capsys)
    assert code == 0
    assert out.exists() and SyntheticSet.load(out).config["cm"] is True
    lines = stdout.splitlines()
    assert any(f"synthetic set saved to {out}" in line for line in lines)
    assert any(line.startswith("evaluation: mlp, 2 epochs") for line in lines)
    rows = [line for line in lines if line.rstrip().endswith("%")]
    assert len(rows) == 2
    assert rows[0].strip().startswith("random real subset") and rows[1].strip().startswith("DM+CM ")
    assert not (_isolated / "runs").exists()  # --out was honoured


# ------------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("argv, match", [
    (["distill", "--dataset", "nope"], "unknown dataset 'nope'"),
    (["distill", "--dataset", "digits", "--ipc", "0"], "ipc must be >= 1"),
    (["run", "--dataset", "digits", "--ipc", "0"], "ipc must be >= 1"),
    (["run", "--dataset", "digits", "--iterations", "1", "--eval-epochs", "0"], "epochs and batch_size"),
    (["evaluate", "--random-subset", "2", "--dataset", "nope"], "unknown dataset 'nope'"),
    (["evaluate", "--random-subset", "0", "--dataset", "digits"], "ipc must be in"),
    (["evaluate", "--random-subset", "2", "--eval-num-models", "0"], "num_models must be >= 1"),
    (["evaluate", "--random-subset", "2", "--eval-dsa-strategy", "blur"], "unknown augmentation family 'blur'"),
    (["evaluate", "--syn", "missing.pt"], "missing.pt"),
    (["distill", "--dataset", "digits", "--ipc", "500"], "larger than the smallest class"),
])
def test_bad_input_is_one_error_line_and_exit_2(argv, match, capsys):
    code, out, err = run_main(argv, capsys)
    assert code == 2
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and match in err
    assert not os.path.exists("runs")


def test_garbage_synthetic_file_is_an_error_not_a_traceback(capsys, _isolated):
    (_isolated / "garbage.pt").write_bytes(b"this is not a torch file")
    code, _, err = run_main(["evaluate", "--syn", "garbage.pt"], capsys)
    assert code == 2 and err.startswith("error: ") and "garbage.pt" in err
    assert len(err.strip().splitlines()) == 1


def test_missing_data_is_an_error_not_a_traceback(capsys, data_dir):
    code, _, err = run_main(["distill", "--dataset", "cifar10"], capsys)
    assert code == 2
    assert err.startswith("error: dataset 'cifar10' not found")
    assert str(data_dir / "cifar10.npz") in err and "Traceback" not in err


def test_module_entry_point_bad_input_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "distill_lib", "distill", "--dataset", "digits", "--ipc", "0"],
                          capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: ipc must be >= 1, got 0"]
    assert proc.stdout == ""


# ------------------------------------------------------------------------------------------------ long work

def test_run_first_look_prints_the_table_a_picture_and_the_full_budget_command(capsys, _isolated):
    """--first-look's defaults give way to explicit flags (here: tiny ones); the output names the full command.

    Given abbreviated, as argparse allows: the flag still takes effect and still leaves the full command."""
    code, stdout, err = run_main(["run", *TINY_DISTILL, *TINY_EVAL, "--first", "--out", "syn.pt"], capsys)
    assert code == 0
    lines = stdout.splitlines()
    assert any(line.startswith("digits, IPC 2 (storage: 2 images per class), 3 iterations") for line in lines)
    assert "training images each" not in stdout  # only said when a stored image holds several (IDM)
    assert sum(line.rstrip().endswith("%") for line in lines) == 2
    picture = _isolated / "syn.png"
    assert f"picture of both sets: {picture.name}" in stdout
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert lines[-1].endswith("python -m distill_lib run " + " ".join([*TINY_DISTILL, *TINY_EVAL, "--out", "syn.pt"]))
    assert err.startswith("first look: 3 iterations, evaluation 2 epochs x 1 networks")


def test_first_look_defaults_fit_the_embedded_data(capsys):
    """The first look's settings on digits: no batch_real larger than the smallest class (no warning about it)."""
    args = parser(first_look=True).parse_args(["run", "--first-look"])
    smallest = min(load_dataset("digits").class_count(c) for c in range(10))
    assert args.batch_real <= smallest and args.iterations < DistillConfig.iterations
    assert args.eval_epochs < EvalProtocol.epochs and args.eval_num_models < EvalProtocol.num_models
    assert parser().parse_args(["run"]).iterations == DistillConfig.iterations  # without the flag: the full budget


def test_feature_net_pretraining_says_its_cost_first_and_counts_batches(capsys, _isolated):
    code, _, err = run_main(["distill", *[a for a in TINY_DISTILL if a != "--no-progress"], "--iterations", "1",
                             "--cc", "--featnet-recipe", "default", "--featnet-epochs", "2", "--featnet-per-class", "5",
                             "--out", "x.pt"], capsys)
    assert code == 0
    assert "pretraining a resnet18 feature net (seed 0) on 50 images for 2 epochs (2 batches of 128)" in err
    assert "featnet resnet18: 100%|██████████| 2/2" in err  # the bar counts batches, not epochs


def test_idm_says_what_its_queue_costs_and_reports_each_queue_step(capsys, _isolated):
    code, _, err = run_main(["distill", *[a for a in TINY_DISTILL if a != "--no-progress"], "--method", "idm",
                             "--iterations", "1", "--queue-train-nets", "1", "--queue-train-steps", "2",
                             "--queue-batch", "8", "--out", "x.pt"], capsys)
    assert code == 0
    assert "IDM: every iteration also trains 1 queue nets 2 SGD steps each on 8 real images (16 image passes" in err
    assert "queue net 1/1, step 2/2" in err


@pytest.mark.parametrize("command, option, values", [
    ("distill", "--model", MODEL_NAMES), ("distill", "--featnet-arch", MODEL_NAMES), ("distill", "--net-norm", NORMS),
    ("distill", "--net-act", ACTIVATIONS), ("evaluate", "--eval-model", MODEL_NAMES),
])
def test_name_options_list_their_values(command, option, values, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = "".join(capsys.readouterr().out.split())  # argparse wraps long lists
    assert f"{option}{{{','.join(values)}}}" in out


def test_compile_help_speaks_of_the_right_networks(capsys):
    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "torch.compile DM's embedding net" in out and "evaluation networks" not in out
