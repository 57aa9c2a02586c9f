"""The course helper: where the repository and the data are found (in which order), the quick-mode switch, the budgets
it picks, the figures it writes and the image grids it draws. Folders are temporary; the environment is patched."""
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from distill_lib import course  # noqa: E402


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A fake checkout <tmp>/work/repo (with distill_lib/ and notebooks/) beside <tmp>/work/shared; no DISTILL_* set."""
    repo = tmp_path / "work" / "repo"
    (repo / "distill_lib").mkdir(parents=True)
    (repo / "notebooks").mkdir()
    for name in ("DISTILL_DATA", "DISTILL_QUICK", "DISTILL_DATASET"):
        monkeypatch.delenv(name, raising=False)
    return repo


def test_find_repo_walks_up_from_a_subfolder(checkout):
    assert course.find_repo(checkout / "notebooks") == checkout.resolve()
    assert course.find_repo(checkout) == checkout.resolve()


def test_find_repo_outside_a_checkout_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="inside the distill_lib repository"):
        course.find_repo(tmp_path)


def test_data_root_order_env_then_repo_data_then_shared_beside(checkout, tmp_path, monkeypatch):
    shared = checkout.parent / "shared" / "data"
    assert course.data_root(checkout) is None  # nothing exists yet
    shared.mkdir(parents=True)
    assert course.data_root(checkout) == shared.resolve()
    (checkout / "data").mkdir()
    assert course.data_root(checkout) == (checkout / "data").resolve()  # ./data wins over ../shared/data
    env = tmp_path / "elsewhere"
    env.mkdir()
    monkeypatch.setenv("DISTILL_DATA", str(env))
    assert course.data_root(checkout) == env.resolve()  # $DISTILL_DATA wins over both
    monkeypatch.setenv("DISTILL_DATA", str(tmp_path / "missing"))
    assert course.data_root(checkout) == (checkout / "data").resolve()  # a folder that does not exist is skipped


def test_export_data_root_sets_the_variable_only_when_unset(checkout, tmp_path, monkeypatch):
    shared = checkout.parent / "shared" / "data"
    shared.mkdir(parents=True)
    assert course.export_data_root(checkout) == shared.resolve()
    assert Path(course.os.environ["DISTILL_DATA"]) == shared.resolve()
    env = tmp_path / "mine"
    env.mkdir()
    monkeypatch.setenv("DISTILL_DATA", str(env))
    course.export_data_root(checkout)
    assert course.os.environ["DISTILL_DATA"] == str(env)


def test_the_script_prints_the_data_root_for_the_makefile(tmp_path):
    env = tmp_path / "data"
    env.mkdir()
    script = Path(course.__file__)
    out = subprocess.run([sys.executable, str(script), "data-root"], capture_output=True, text=True, check=True,
                         env={"DISTILL_DATA": str(env), "PATH": ""})
    assert out.stdout.strip() == str(env.resolve())


@pytest.mark.parametrize("value, quick", [(None, False), ("", False), ("0", False), ("1", True)])
def test_quick_flag_from_the_environment(monkeypatch, value, quick):
    if value is None:
        monkeypatch.delenv("DISTILL_QUICK", raising=False)
    else:
        monkeypatch.setenv("DISTILL_QUICK", value)
    assert course.quick_from_env() is quick


def test_quick_flag_rejects_other_values(monkeypatch):
    monkeypatch.setenv("DISTILL_QUICK", "yes")
    with pytest.raises(ValueError, match="DISTILL_QUICK must be 1"):
        course.quick_from_env()


def test_start_in_quick_mode_uses_digits_and_says_so_first(checkout, monkeypatch, capsys):
    monkeypatch.chdir(checkout / "notebooks")
    monkeypatch.setenv("DISTILL_QUICK", "1")
    setup = course.start("09_test")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("09_test: QUICK mode (DISTILL_QUICK=1)")
    assert setup.quick and setup.dataset == "digits" and setup.repo == checkout.resolve()
    assert setup.figures == checkout.resolve() / "figures" and setup.figures.is_dir()
    assert setup.pick(quick=(1, 2), full=(3, 4)) == (1, 2)


def test_start_in_full_mode_takes_the_real_set_when_its_file_is_there(checkout, monkeypatch, capsys):
    monkeypatch.chdir(checkout / "notebooks")
    data = checkout / "data"
    data.mkdir()
    (data / "cifar10.npz").write_bytes(b"")
    setup = course.start("09_test")
    assert capsys.readouterr().out.startswith("09_test: FULL mode")
    assert not setup.quick and setup.dataset == "cifar10" and setup.data_root == data.resolve()
    assert setup.pick(quick=(1, 2), full=(3, 4)) == (3, 4)
    monkeypatch.setenv("DISTILL_DATASET", "fashion_mnist")  # not in the folder: digits, and a line that says so
    assert course.start("09_test").dataset == "digits"
    assert "no fashion_mnist.npz" in capsys.readouterr().out


def test_the_argument_overrides_the_environment(checkout, monkeypatch):
    monkeypatch.chdir(checkout)
    monkeypatch.setenv("DISTILL_QUICK", "1")
    assert not course.start("09_test", quick=False).quick


def test_savefig_writes_a_png_named_after_the_notebook(checkout, monkeypatch):
    monkeypatch.chdir(checkout)
    setup = course.start("09_test", quick=True)
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [1, 0])
    path = setup.savefig(fig, "line")
    plt.close(fig)
    assert path == checkout.resolve() / "figures" / "09_test_line.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_finish_reports_the_elapsed_time(checkout, monkeypatch, capsys):
    monkeypatch.chdir(checkout)
    setup = course.start("09_test", quick=True)
    setup.t0 -= 5.0  # as if the notebook had started five seconds earlier
    seconds = setup.finish()
    assert 5.0 <= seconds < 60.0
    assert capsys.readouterr().out.splitlines()[-1] == "09_test ran in 5 s (quick mode)"


def test_show_grid_places_images_row_major_with_row_labels():
    images = torch.rand(6, 3, 4, 4)
    images[4] = 0.25  # row 1, column 1
    fig = course.show_grid(images, rows=2, cols=3, row_labels=("a", "b"), title="grid")
    axes = np.array(fig.axes).reshape(2, 3)
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["a", "b"]
    assert np.allclose(axes[1, 1].images[0].get_array(), 0.25)
    assert np.allclose(axes[0, 2].images[0].get_array(), images[2].permute(1, 2, 0).numpy())
    assert fig._suptitle.get_text() == "grid"
    width, height = fig.get_size_inches()
    assert width > height  # 3 columns, 2 rows
    plt.close(fig)


def test_show_image_draws_one_channel_in_grey():
    fig, ax = plt.subplots()
    course.show_image(ax, torch.full((1, 5, 7), 0.5), title="x")
    image = ax.images[0]
    assert image.get_array().shape == (5, 7) and image.get_cmap().name == "gray"
    assert ax.get_title() == "x" and list(ax.get_xticks()) == []
    plt.close(fig)
