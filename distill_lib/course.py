"""What every course notebook needs before its first lesson: the repository, the data folder, quick or full budgets,
figures saved under figures/, image grids, and the notebook's running time.

A notebook opens with::

    from distill_lib import course
    setup = course.start("01_dm")                                        # prints the mode in plain words
    IPC, ITERATIONS = setup.pick(quick=(10, 30), full=(10, 200))         # one budget line per group of knobs
    ...
    setup.finish()                                                       # last cell: the measured time

Quick mode (``DISTILL_QUICK=1``, what ``make lab`` and the tests use) runs on scikit-learn's small ``digits`` set with
seconds-sized budgets; full mode runs on a real data set with the budgets the notebook states. A notebook that asks a
question ends with the measured answer, apart from its quick-mode illustration::

    course.measured("ablation").show()   # results/ablation.json if a benchmark run wrote it, else docs/results.md

torch and matplotlib are imported inside the functions that need them, so that ``python distill_lib/course.py``
(the Makefile's data-folder lookup) runs with a bare Python.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
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


def plot_cc_gain(table: dict, title: str = "What CC's gain depends on"):
    """CC's gain over DM (filled), the control's, DM matched in the same feature net without CC (hollow), and
    CC+CM's (crosses) against the feature net's test accuracy, one marker shape per pool size; CM's gain, which needs
    no feature net, as a dashed line (one per distinct value: rows of another distillation seed have their own).
    Reads the table benchmarks/cc_gain.py prints ({"columns", "rows"}, as results/cc_gain.json stores it; "-" where
    a column was not measured, not drawn). Returns the figure."""
    import matplotlib.pyplot as plt

    columns = table["columns"]
    def number(row: list, name: str) -> float:  # "48.09 %", "48.09 ± 0.30 %", "+1.20"; "-" or no column: nan
        text = row[columns.index(name)].strip() if name in columns else "-"
        return float("nan") if text == "-" else float(text.split(" ±")[0].rstrip(" %"))
    rows = [(int(r[columns.index("pool")]), *(number(r, name) for name in
                                              ("net accuracy", "CC gain", "control gain", "CC+CM gain")))
            for r in table["rows"]]
    fig, ax = plt.subplots(figsize=(6.4, 4), layout="constrained")
    ax.axhline(0, color="grey", lw=0.8)
    cm_gains = list(dict.fromkeys(g for g in (number(r, "+CM") - number(r, "DM") for r in table["rows"]) if g == g))
    for k, gain in enumerate(cm_gains):  # the same cells in every row of one seed
        label = "+CM (no feature net): " + " / ".join(f"{g:+.2f}" for g in cm_gains) if k == 0 else None
        ax.axhline(gain, color="C2", lw=1, ls="--", label=label)
    for k, pool in enumerate(sorted({r[0] for r in rows})):
        mine = [r for r in rows if r[0] == pool]
        marker = "osD^v"[k % 5]
        series = ((2, f"+CC, pool of {pool}", dict(marker=marker, color="C0")),
                  (3, f"control: DM in the feature net, pool of {pool}",
                   dict(marker=marker, facecolors="none", edgecolors="C1")),
                  (4, f"+CC+CM, pool of {pool}", dict(marker="x" if k == 0 else "+", color="C2")))
        for index, label, style in series:
            y = [r[index] for r in mine]
            if any(v == v for v in y):  # a series nobody measured gets no marker and no legend entry
                ax.scatter([r[1] for r in mine], y, s=50, label=label, **style)
    ax.set_xlabel("feature net's test accuracy (%)")
    ax.set_ylabel("gain over DM (points)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return fig


# ------------------------------------------------------------------------------------------------------------
# The measured answers. Each benchmark writes results/<benchmark>.json (benchmarks/common.py: write_results); the
# measurements made before the benchmarks wrote these files are the sections of docs/results.md, each naming its
# benchmark script, command, budget, date and commit. The tables of both are markdown, parsed here.

RESULTS_DOC = Path("docs") / "results.md"
DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?:/\d{2})?")  # 2026-11-29, or 2026-11-29/30 for two days
COMMIT = re.compile(r"`([0-9a-f]{7,40})`")


def parse_tables(text: str) -> tuple[list[dict], list[str]]:
    """The markdown tables in ``text`` ({"title", "columns", "rows"}; the title is the markdown heading printed
    last before the table, "" if none) and the other non-empty lines (headings excluded), in order."""
    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    lines, tables, notes, title, i = text.splitlines(), [], [], "", 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("|") and i + 1 < len(lines) and lines[i + 1].strip().startswith("|---"):
            table = {"title": title, "columns": cells(line), "rows": []}
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                table["rows"].append(cells(lines[i]))
                i += 1
            tables.append(table)
            continue
        if line.startswith("#"):
            title = line.lstrip("#").strip()
        elif line:
            notes.append(line)
        i += 1
    return tables, notes


def markdown_table(table: dict) -> list[str]:
    """A table ({"columns", "rows"}) as markdown lines: header, separator, one line per row."""
    return ["| " + " | ".join(table["columns"]) + " |", "|" + "---|" * len(table["columns"]),
            *("| " + " | ".join(row) + " |" for row in table["rows"])]


def git_state(repo: Path | None = None) -> tuple[str | None, bool | None]:
    """The checkout's commit and whether tracked files differ from it (None, None outside a git checkout)."""
    repo = repo or Path(__file__).resolve().parents[1]

    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
    try:
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return None, None


def commit_text(commit: str | None, dirty: bool | None) -> str:
    """A results file's commit in words: its first 12 digits, flagged when the checkout had uncommitted changes."""
    return "unknown" if commit is None else commit[:12] + (" (uncommitted changes)" if dirty else "")


@dataclass
class Measured:
    """A benchmark's measured answer: its tables, and where, how and when they were measured. ``command``, ``budget``
    and ``provenance`` are markdown as written at the source (commands in backticks; the budget with its own label,
    "Budget: ...", when it has one); ``dates`` and ``commits`` are the ones the source names."""
    benchmark: str
    source: str  # the file (and section) the answer was read from
    command: str
    budget: str
    provenance: str  # when and at which commit, in one sentence
    dates: list[str]
    commits: list[str]
    tables: list[dict]

    def markdown(self) -> str:
        """The answer as markdown: what and from where, command, budget, provenance, then the tables (each title
        once, where it changes)."""
        out = [f"**Measured answer of `benchmarks/{self.benchmark}.py`** (not quick mode), read from {self.source}.",
               "", f"- Command: {self.command}", f"- {labelled(self.budget, 'Budget', 'Protocol')}",
               f"- {self.provenance}", ""]
        title = ""
        for table in self.tables:
            if table["title"] and table["title"] != title:
                out += [f"*{table['title']}*", ""]
            title = table["title"]
            out += [*markdown_table(table), ""]
        return "\n".join(out)

    def show(self) -> None:
        """Display the answer: rendered markdown in a notebook (IPython), the same markdown as plain text elsewhere."""
        text = self.markdown()
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            get_ipython = None
        if get_ipython is not None and get_ipython() is not None:
            display({"text/markdown": text, "text/plain": text}, raw=True)  # a console shows the plain text
        else:
            print(text)


def measured(benchmark: str, section: str | None = None, repo: Path | None = None) -> Measured:
    """The measured answer of benchmarks/<benchmark>.py: results/<benchmark>.json when a run wrote it, else the
    section of docs/results.md that names the script in its first line (or, with ``section``, the section with that
    heading). ``repo``: the repository root (default: find_repo())."""
    repo = repo or find_repo()
    path = repo / "results" / f"{benchmark}.json"
    if path.exists():
        return measured_from_json(benchmark, path)
    return measured_from_doc(benchmark, repo / RESULTS_DOC, section)


def measured_runs(benchmark: str, folder: Path | None = None) -> list[Measured]:
    """Every results file of benchmarks/<benchmark>.py in ``folder`` (default the repository's results/):
    <benchmark>.json and the runs kept beside it with ``--results-tag`` (<benchmark>.<tag>.json), in name order.
    Empty when none was written."""
    folder = Path(folder) if folder is not None else find_repo() / "results"
    paths = sorted({*folder.glob(f"{benchmark}.json"), *folder.glob(f"{benchmark}.*.json")})
    return [measured_from_json(benchmark, path) for path in paths]


def cc_gain_budget(budget: str) -> str:
    """benchmarks/cc_gain.py's budget line without its lambda_CC clause and its first seed: rows whose scans differ,
    or whose lambda_CC was given, are still at one budget (each row names its lambda_CC), as are runs of as many
    distillation seeds from another first seed (each row's nets are its seeds'), so one figure joins them."""
    return re.sub(r" from seed \d+;", ";", re.sub(r"lambda_CC [^;]*;", "lambda_CC per row;", budget))


def cc_gain_runs(folder: Path | None = None, like: Path | None = None) -> list[Measured]:
    """The runs of benchmarks/cc_gain.py (:func:`measured_runs`) at one budget (:func:`cc_gain_budget`), whose rows
    one figure joins: the budget of the results file ``like``, by default the newest run's. Empty when none was
    written. A run at another budget (e.g. more seeds, shorter evaluations) is left out, not drawn beside them."""
    runs = measured_runs("cc_gain", folder)
    if not runs:
        return []
    budget = (measured_from_json("cc_gain", Path(like)) if like is not None else max(runs, key=lambda r: r.dates)).budget
    return [run for run in runs if cc_gain_budget(run.budget) == cc_gain_budget(budget)]


def joined(tables: list[dict], title: str = "") -> dict:
    """The rows of several tables with the same columns (e.g. one table per run) as one table."""
    if not tables:
        raise ValueError("no tables to join")
    columns = tables[0]["columns"]
    for table in tables[1:]:
        if table["columns"] != columns:
            raise ValueError(f"cannot join tables with different columns: {columns} and {table['columns']}")
    return {"title": title, "columns": columns, "rows": [row for table in tables for row in table["rows"]]}


def measured_from_json(benchmark: str, path: Path) -> Measured:
    """A results file as benchmarks/common.py writes it: tables, protocol, command, date, commit."""
    record = json.loads(path.read_text(encoding="utf-8"))
    commit = commit_text(record["commit"], record["dirty"])
    return Measured(benchmark, f"`results/{path.name}`", f"`{record['command']}`",
                    record["protocol"], f"Measured {record['date']} at commit `{commit}`.",
                    [record["date"]], [record["commit"]] if record["commit"] else [], record["tables"])


def doc_sections(text: str) -> dict[str, str]:
    """The level-2 sections of a markdown document: heading -> body (its level-3 subsections included)."""
    sections, heading = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
            sections[heading] = []
        elif heading is not None:
            sections[heading].append(line)
    return {heading: "\n".join(lines) for heading, lines in sections.items()}


def measured_from_doc(benchmark: str, path: Path, section: str | None = None) -> Measured:
    """A section of docs/results.md: its first paragraph names the script, then when and at which commit; its
    "Command(s):" paragraph, its "Budget:" (or "Protocol") paragraph, and its tables (titled by their level-3
    heading; those before the first one untitled, the section's heading being the source's)."""
    script = f"`benchmarks/{benchmark}.py`"
    sections = doc_sections(path.read_text(encoding="utf-8")) if path.exists() else {}
    if section is None:
        found = [h for h, body in sections.items() if body.strip().startswith(script)]
    else:
        found = [h for h in sections if h.lower() == section.strip().lower()]
    if not found:
        wanted = f"no section headed {section!r}" if section else f"no section that starts with {script}"
        raise LookupError(f"no measured answer for {benchmark!r}: no results/{benchmark}.json, and {path} has "
                          f"{wanted} (sections: {', '.join(sections) or 'none'})")
    heading = found[0]
    body = sections[heading]
    paragraphs = [" ".join(part.split()) for part in re.split(r"\n\s*\n", body) if part.strip()]
    first = strip_label(paragraphs[0], script + ".")
    command = next((p for p in paragraphs if p.startswith(("Command:", "Commands:"))), None)
    budget = next((p for p in paragraphs if p.startswith(("Budget", "Protocol"))), None)
    if command is None or budget is None:
        raise ValueError(f"{path}, section {heading!r}: no 'Command:' or no 'Budget:' paragraph")
    return Measured(benchmark, f"`{RESULTS_DOC.as_posix()}`, section \"{heading}\"",
                    strip_label(command, "Commands:", "Command:"), budget, first, DATE.findall(first),
                    COMMIT.findall(first), parse_tables(body)[0])


def labelled(text: str, label: str, *also: str) -> str:
    """``text`` as it is when it starts with ``label`` or one of ``also``, else "<label>: <text>"."""
    return text if text.startswith((label, *also)) else f"{label}: {text}"


def strip_label(text: str, *labels: str) -> str:
    """``text`` without the first of ``labels`` it starts with (and the spaces after it)."""
    text = text.strip()
    label = next((label for label in labels if text.startswith(label)), "")
    return text[len(label):].strip()


if __name__ == "__main__":
    # `python distill_lib/course.py data-root`: the data folder (or nothing), for the Makefile.
    if sys.argv[1:] != ["data-root"]:
        sys.exit("usage: python distill_lib/course.py data-root")
    print(data_root(find_repo(Path(__file__).parent)) or "")
