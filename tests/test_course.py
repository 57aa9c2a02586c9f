"""The course helper: where the repository and the data are found (in which order), the quick-mode switch, the budgets
it picks, the figures it writes, the image grids it draws, and the measured answers it reads back. Folders are
temporary; the environment is patched."""
import json
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


# ------------------------------------------------------------------------------------------------------------
# The measured answers the notebooks end with: results/<benchmark>.json when a benchmark run wrote it, else the
# benchmark's section of docs/results.md.

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_BENCHMARKS = ("ablation", "idm", "beta_lambda", "continual")  # what notebooks 04-08 show


@pytest.fixture
def repo_with_docs(tmp_path):
    """A fake checkout with distill_lib/ and a copy of the real docs/results.md, and no results/ yet."""
    (tmp_path / "distill_lib").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "results.md").write_text((REPO / "docs" / "results.md").read_text(encoding="utf-8"),
                                                  encoding="utf-8")
    return tmp_path


def write_results_file(repo, name, printed_text, protocol):
    """results/<name>.json as a benchmark writes it: what it printed, recorded, then benchmarks/common.write_results."""
    import argparse

    sys.path.insert(0, str(REPO / "benchmarks"))
    import common

    stdout = sys.stdout
    try:
        common.record_output()
        print(printed_text)
        return common.write_results(name, argparse.Namespace(results_dir=repo / "results"), protocol,
                                    argv=["--datasets", "digits"])
    finally:
        sys.stdout = stdout


def test_the_docs_fallback_reads_the_ablation_section_with_its_command_budget_date_and_commit(repo_with_docs):
    answer = course.measured("ablation", repo=repo_with_docs)
    assert answer.source == '`docs/results.md`, section "DM vs +CC vs +CM vs +CC+CM"'
    assert answer.command.startswith("`OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 benchmarks/ablation.py")
    assert answer.budget.startswith("Budget: IPC 10, 100 iterations")
    assert answer.dates == ["2026-11-30"] and answer.commits == ["88b1c2d", "ba3274c"]
    main, cc_scan, cm_scan = answer.tables
    assert main["columns"] == ["dataset", "IPC", "lambda_CC", "lambda_CM", "DM", "+CC", "+CM", "+CC+CM",
                               "+CC+CM - DM"]
    assert main["rows"][0] == ["fashion_mnist", "10", "0.001", "0.1", "80.57 ± 0.18 %", "80.51 ± 0.16 %",
                               "81.16 ± 0.16 %", "81.18 ± 0.15 %", "+0.61"]
    assert [row[0] for row in main["rows"]] == ["fashion_mnist", "cifar10"]
    assert cc_scan["columns"][:3] == ["dataset", "term", "0.001"] and cm_scan["rows"][1][1] == "DM + CM (lambda_CM)"
    assert main["title"] == ""  # the section's own heading is the source's, not repeated per table


def test_the_docs_fallback_keeps_a_subsection_heading_as_the_table_title(repo_with_docs):
    answer = course.measured("dm_accuracy", repo=repo_with_docs)
    assert [t["title"] for t in answer.tables[:2]] == ["", "How the IPC-50 budget was found"]
    assert answer.dates == ["2026-11-29", "2026-11-30"] and answer.commits == ["06ba5a9"]


@pytest.mark.parametrize("benchmark", NOTEBOOK_BENCHMARKS)
def test_every_benchmark_a_notebook_shows_has_a_complete_docs_section(repo_with_docs, benchmark):
    answer = course.measured(benchmark, repo=repo_with_docs)
    assert f"benchmarks/{benchmark}.py" in answer.command
    assert answer.budget.startswith(("Budget:", "Protocol")) and answer.dates and answer.commits
    assert answer.tables and all(table["rows"] for table in answer.tables)
    assert all(len(row) == len(table["columns"]) for table in answer.tables for row in table["rows"])


def test_a_section_can_be_named_by_its_heading(repo_with_docs):
    by_heading = course.measured("idm", section="dm vs idm, with and without cc+cm", repo=repo_with_docs)
    assert by_heading == course.measured("idm", repo=repo_with_docs)


def test_the_results_file_wins_over_the_docs_when_a_run_wrote_it(repo_with_docs):
    printed_text = "\n".join(["## Test accuracy", "", "| dataset | IPC | DM | +CC+CM |", "|---|---|---|---|",
                              "| digits | 10 | 90.00 ± 1.00 % | 91.00 ± 0.50 % |"])
    path = write_results_file(repo_with_docs, "ablation", printed_text, "Budget: 3 iterations.")
    record = json.loads(path.read_text(encoding="utf-8"))
    answer = course.measured("ablation", repo=repo_with_docs)
    assert answer.source == "`results/ablation.json`"
    assert answer.tables == [{"title": "Test accuracy", "columns": ["dataset", "IPC", "DM", "+CC+CM"],
                              "rows": [["digits", "10", "90.00 ± 1.00 %", "91.00 ± 0.50 %"]]}]
    assert answer.command == f"`{record['command']}`" and answer.command.endswith("ablation.py --datasets digits`")
    assert answer.budget == "Budget: 3 iterations."
    assert answer.dates == [record["date"]] and answer.commits == ([record["commit"]] if record["commit"] else [])
    assert course.measured("idm", repo=repo_with_docs).source.startswith("`docs/results.md`")  # no idm.json


def test_an_unknown_benchmark_or_section_says_what_is_missing(repo_with_docs, tmp_path):
    with pytest.raises(LookupError, match=r"no measured answer for 'nosuch': no results/nosuch.json, and .* "
                                          r"has no section that starts with `benchmarks/nosuch.py`"):
        course.measured("nosuch", repo=repo_with_docs)
    with pytest.raises(LookupError, match="has no section headed 'Nothing' .sections: DM vs a random real subset, "):
        course.measured("idm", section="Nothing", repo=repo_with_docs)
    (repo_with_docs / "docs" / "results.md").unlink()
    with pytest.raises(LookupError, match="sections: none"):
        course.measured("idm", repo=repo_with_docs)


def test_the_answer_shows_as_markdown_with_source_command_budget_provenance_and_tables(repo_with_docs, capsys):
    answer = course.measured("idm", repo=repo_with_docs)
    text = answer.markdown()
    lines = text.splitlines()
    assert lines[0].startswith("**Measured answer of `benchmarks/idm.py`** (not quick mode), read from "
                               "`docs/results.md`, section")
    assert f"- Command: {answer.command}" in lines
    assert "- Budget: **storage is the same in every column" in text  # docs paragraph, labelled as written
    assert f"- {answer.provenance}" in lines and answer.provenance.startswith("Measured 2026-11-30")
    for table in answer.tables:
        assert "\n".join(course.markdown_table(table)) in text
    assert course.parse_tables(text)[0] == answer.tables  # the tables read back from the display are the tables
    answer.show()  # outside a notebook: the same markdown, printed
    assert capsys.readouterr().out == text + "\n"


def test_a_budget_without_its_own_label_gets_one(repo_with_docs):
    write_results_file(repo_with_docs, "idm", "| a | b |\n|---|---|\n| 1 | 2 |", "Storage = IPC images per class.")
    text = course.measured("idm", repo=repo_with_docs).markdown()
    assert "- Budget: Storage = IPC images per class." in text


def test_show_in_a_notebook_displays_markdown_and_plain_text(repo_with_docs, monkeypatch):
    import IPython
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython, "get_ipython", lambda: object())  # as inside a kernel
    monkeypatch.setattr(IPython.display, "display", lambda data, raw: shown.append((data, raw)))
    answer = course.measured("continual", repo=repo_with_docs)
    answer.show()
    assert shown == [({"text/markdown": answer.markdown(), "text/plain": answer.markdown()}, True)]


def test_markdown_tables_round_trip_through_the_parser():
    table = {"title": "", "columns": ["a", "b c"], "rows": [["1", "x ± y %"], ["2", "**3**"]]}
    assert course.parse_tables("\n".join(course.markdown_table(table)))[0] == [table]
    assert course.commit_text("0123456789abcdef", True) == "0123456789ab (uncommitted changes)"
    assert course.commit_text(None, None) == "unknown"
