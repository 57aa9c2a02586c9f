"""Shared fixtures: the tiny ``digits`` data set, and a per-test cache folder so no test writes to ~/.cache."""
import os

import pytest
import torch

from distill_lib.data import load_dataset
from distill_lib.distill import Distiller

# The test machine's 2 cores are shared with other jobs: torch's intra-op threads then spin against each other and a
# tiny test can run 10-100x slower. One thread keeps the suite fast and its timing stable.
torch.set_num_threads(int(os.environ.get("DISTILL_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own DISTILL_CACHE (feature nets, decoded data copies) and DISTILL_RESULTS (a benchmark
    run by a test writes its results file there, never into the repository's results/)."""
    cache = tmp_path / "distill_cache"
    monkeypatch.setenv("DISTILL_CACHE", str(cache))
    monkeypatch.setenv("DISTILL_RESULTS", str(tmp_path / "results"))
    return cache


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """scikit-learn's digits (16x16 grayscale, 10 classes), loaded once per session; treat as read-only."""
    with pytest.MonkeyPatch.context() as mp:  # session fixtures run before the per-test cache is set
        mp.setenv("DISTILL_CACHE", str(tmp_path_factory.mktemp("session_cache")))
        return load_dataset("digits")


def interrupt_step_at(monkeypatch, iteration: int) -> None:
    """From now on in this test, a distillation step raises KeyboardInterrupt (as Ctrl-C does) when its run is at
    ``iteration``, before computing anything; other steps run as before (through any wrapper already in place)."""
    step = Distiller.step

    def interrupted(run):
        if run.iteration == iteration:
            raise KeyboardInterrupt
        return step(run)
    monkeypatch.setattr(Distiller, "step", interrupted)
