"""What every course notebook needs before its first lesson: the repository, the data folder, quick or full budgets,
figures saved under figures/, image grids, and the notebook's running time.

A notebook opens with::

    from distill_lib import course
    setup = course.start("01_dm")                                        # prints the mode in plain words
    IPC, ITERATIONS = setup.pick(quick=(10, 30), full=(10, 200))         # one budget line per group of knobs
    ...
    setup.finish()                                                       # last cell: the measured time

Quick mode (``DISTILL_QUICK=1``, what ``make lab`` and the tests use) runs on scikit-learn's small ``digits`` set with
seconds-sized budgets; full mode runs on a real data set with the budgets the notebook states.

torch and matplotlib are imported inside the functions that need them, so that ``python distill_lib/course.py``
(the Makefile's data-folder lookup) runs with a bare Python.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

QUICK_VARIABLE = "DISTILL_QUICK"
DATA_VARIABLE = "DISTILL_DATA"
QUICK_DATASET = "digits"  # scikit-learn's 8x8 digits (upsampled to 16x16, ~1.4k training images): no download


def find_repo(start: Path | None = None) -> Path:
    """The repository root: the nearest folder at or above ``start`` (default: the working directory) that holds
    distill_lib/. Notebooks run with the working directory notebooks/, scripts from the root."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "distill_lib").is_dir():
            return folder
    raise FileNotFoundError(f"no distill_lib/ at or above {here}: run this from inside the distill_lib repository")


def data_root(repo: Path) -> Path | None:
    """The folder that holds the real data sets: $DISTILL_DATA, else the repository's data/, else shared/data beside
    the checkout (the offline copies); the first of these that is an existing folder, None when none is."""
    candidates = (os.environ.get(DATA_VARIABLE), repo / "data", repo.parent / "shared" / "data")
    return next((Path(p).resolve() for p in candidates if p and Path(p).is_dir()), None)


def export_data_root(repo: Path) -> Path | None:
    """``data_root(repo)``, also written to $DISTILL_DATA when that is unset, so that the library's loaders (which
    read $DISTILL_DATA, else ./data) find the same folder from any working directory."""
    root = data_root(repo)
    if root is not None and not os.environ.get(DATA_VARIABLE):
        os.environ[DATA_VARIABLE] = str(root)
    return root


def quick_from_env() -> bool:
    """True when $DISTILL_QUICK is 1 (quick mode), False when it is unset, empty or 0."""
    value = os.environ.get(QUICK_VARIABLE, "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"{QUICK_VARIABLE} must be 1 (quick mode) or 0 / unset (full mode), not {value!r}")
    return value == "1"


@dataclass
class Setup:
    """One notebook's setting: its mode, data and folders, and the clock started when it began."""
    notebook: str
    quick: bool
    repo: Path
    data_root: Path | None
    dataset: str
    figures: Path
    t0: float = field(default_factory=time.time)  # wall-clock start (time.time(), so notebooks can subtract it)

    def pick(self, quick, full):
        """The quick-mode value(s) in quick mode, the full-mode ones otherwise (pass tuples to set several knobs in
        one line: ``IPC, ITERATIONS = setup.pick(quick=(10, 30), full=(10, 200))``)."""
        return quick if self.quick else full

    def savefig(self, fig, name: str) -> Path:
        """Save ``fig`` as figures/<notebook>_<name>.png (120 dpi, tight) and return the path."""
        path = self.figures / f"{self.notebook}_{name}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        return path

    def elapsed(self) -> float:
        """Seconds since the notebook started."""
        return time.time() - self.t0

    def finish(self) -> float:
        """Print and return the notebook's measured running time (its last cell)."""
        seconds = self.elapsed()
        print(f"{self.notebook} ran in {seconds:.0f} s ({'quick' if self.quick else 'full'} mode)")
        return seconds


def choose_dataset(quick: bool, real_set: str, root: Path | None) -> str:
    """``digits`` in quick mode; otherwise ``real_set`` when <root>/<real_set>.npz exists, else ``digits`` (said)."""
    if quick:
        return QUICK_DATASET
    if root is not None and (root / f"{real_set}.npz").exists():
        return real_set
    print(f"no {real_set}.npz in the data folder ({root}); falling back to {QUICK_DATASET}")
    return QUICK_DATASET


def describe_mode(quick: bool, real_set: str) -> str:
    """The mode in plain words, with how to switch to the other one."""
    if quick:
        return (f"QUICK mode ({QUICK_VARIABLE}=1): the small {QUICK_DATASET} set, seconds-sized budgets; it shows that "
                f"everything runs, it measures nothing.\n  Full mode: unset {QUICK_VARIABLE} (or course.start(..., "
                f"quick=False)) for {real_set} and the full budgets of the first cell.")
    return (f"FULL mode ({QUICK_VARIABLE} unset or 0): {real_set} and the full budgets of the first cell (long on a CPU).\n"
            f"  Quick mode: `make lab`, {QUICK_VARIABLE}=1, or course.start(..., quick=True).")


def start(notebook: str, real_set: str = "cifar10", quick: bool | None = None) -> Setup:
    """Set up a notebook and print its mode, data and environment in its first lines.

    ``real_set`` is the full-mode data set ($DISTILL_DATASET overrides it); ``quick`` overrides $DISTILL_QUICK
    (None: follow the variable). The data folder is exported to $DISTILL_DATA when unset (see export_data_root).
    """
    import torch

    quick = quick_from_env() if quick is None else quick
    real_set = os.environ.get("DISTILL_DATASET", real_set)
    repo = find_repo()
    root = export_data_root(repo)
    figures = repo / "figures"
    figures.mkdir(exist_ok=True)
    print(f"{notebook}: {describe_mode(quick, real_set)}")
    setup = Setup(notebook, quick, repo, root, choose_dataset(quick, real_set, root), figures)
    print(f"data set: {setup.dataset} | data folder: {root} | figures -> {figures}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CUDA: {torch.cuda.is_available()}")
    return setup


def show_image(ax, image, title: str | None = None) -> None:
    """Draw one (C, H, W) image with values in [0, 1] on ``ax``: grey for one channel, RGB for three; no ticks."""
    img = image.detach().permute(1, 2, 0).cpu().numpy()
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def show_grid(images, rows: int, cols: int, row_labels=(), title: str | None = None, scale: float = 0.9):
    """Plot (rows * cols, C, H, W) images with values in [0, 1] row-major in a rows x cols grid, one label per row;
    returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(cols * scale + 0.8, rows * scale + 0.4), squeeze=False,
                             layout="constrained")
    for ax, image in zip(axes.flat, images):
        show_image(ax, image)
    for ax, label in zip(axes[:, 0], row_labels):
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


if __name__ == "__main__":
    # `python distill_lib/course.py data-root`: the data folder (or nothing), for the Makefile.
    if sys.argv[1:] != ["data-root"]:
        sys.exit("usage: python distill_lib/course.py data-root")
    print(data_root(find_repo(Path(__file__).parent)) or "")
