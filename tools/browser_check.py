"""Browser check of the course: does every notebook run, and do the widgets work, where students use them?

    python tools/browser_check.py                                  # Run All of every notebook, then the panel
    python tools/browser_check.py --notebooks 00_setup_and_baseline 01_dm   # Run All of these only
    python tools/browser_check.py --panel-only                     # notebook 07's panel only
    python tools/browser_check.py --run-all-only --json times.json # every notebook, results also as JSON

Starts JupyterLab on loopback (a free port, a random token) in quick mode (``DISTILL_QUICK=1`` in the server's
environment, so every kernel inherits it) with an empty temporary ``DISTILL_CACHE``, serving throw-away copies of
the notebooks (nothing in the repository is ever saved over, and the figures they write stay in the copy), and
drives it with headless Chromium through Playwright. Two parts:

* **Run All**, for each notebook: open it, press "Run > Run All Cells" in the menu, wait until the kernel is idle and
  no cell is still running, save it from the browser and read the saved copy. An error is an
  ``application/vnd.jupyter.error`` output, a Python traceback printed to any stream, an exception line
  (``ValueError: ...``) printed to stderr, or a traceback inside a widget's output area; any code cell left without
  an execution count fails the notebook too. Other stderr (warnings) is listed but not counted. Prints each
  notebook's Run All wall time, its code cells and its errors (cell index and first line), then a summary table.
* **Panel** (notebook 07): runs the cells tagged "panel", moves the beta slider with the keyboard, clicks Run, and
  checks that the status reports a fresh computation and that the picture changed; saves a screenshot of the panel
  to figures/07_ablations_browser_check.png.

Exit status 1 when a notebook has an error or the panel fails. Needs Debian's chromium (``apt-get install
chromium``; or $CHROMIUM) and ``pip install playwright`` (its own browser download is not needed). When either is
missing it prints SKIP and exits 0 (exit 1 with --strict).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
PANEL_NOTEBOOK = NOTEBOOKS / "07_ablations.ipynb"
SCREENSHOT = REPO / "figures" / "07_ablations_browser_check.png"
# Top-level entries of the repository the served copy does not link: copied instead (notebooks, figures) or not needed.
NOT_LINKED = {"notebooks", "figures", ".git", ".venv"}
# JupyterLab user settings for the check: every cell in the DOM (no windowing), no autosave, no news pop-up.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}
TRACEBACK = "Traceback (most recent call last)"
# An exception's last line as Python prints it: "ValueError: ...", "torch.OutOfMemoryError", "KeyboardInterrupt".
EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit)\b(?::.*)?$")


def log(message: str) -> None:
    print(f"[browser-check {time.strftime('%H:%M:%S')}] {message}", flush=True)


class CheckFailed(Exception):
    """A part of the check that could not finish (a timeout, a dialog, an error in the panel)."""


# --- reading a saved notebook's outputs ---------------------------------------------------------------------------


@dataclasses.dataclass
class Finding:
    cell: int  # index among all cells of the notebook, as JupyterLab counts them
    kind: str  # "error", "stderr traceback", "widget traceback", "not run", "stderr"
    first_line: str


def output_text(output: dict) -> str:
    text = output.get("text", "")
    return "".join(text) if isinstance(text, list) else text


def exception_summary(text: str) -> str:
    """The line naming the exception in printed text (the last one, as Python prints it), else its first line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    named = [line for line in lines if EXCEPTION_LINE.match(line)]
    return named[-1][:200] if named else (lines or [""])[0][:200]


def scan_notebook(notebook: dict) -> tuple[list[Finding], list[Finding], int]:
    """Errors and other stderr in a notebook's saved outputs, and how many code cells it has.

    Errors: error outputs, tracebacks in any stream, exception lines on stderr, code cells without an execution count.
    The rest of stderr (warnings, progress bars) comes back as notes.
    """
    errors, notes, code_cells = [], [], 0
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code":
            continue
        code_cells += 1
        if cell.get("execution_count") is None:
            errors.append(Finding(index, "not run", "".join(cell["source"]).strip().split("\n")[0][:120]))
        for output in cell.get("outputs", []):
            if output["output_type"] == "error":
                errors.append(Finding(index, "error", f"{output['ename']}: {output['evalue']}"[:200]))
            elif output["output_type"] == "stream":
                text = output_text(output)
                on_stderr = output.get("name") == "stderr"
                if TRACEBACK in text or (on_stderr and any(EXCEPTION_LINE.match(line) for line in text.splitlines())):
                    errors.append(Finding(index, f"{output.get('name')} traceback", exception_summary(text)))
                elif on_stderr and text.strip():
                    notes.append(Finding(index, "stderr", text.strip().split("\n")[0][:200]))
    return errors, notes, code_cells


# --- the server ---------------------------------------------------------------------------------------------------


def missing_prerequisite() -> str | None:
    """Why the check cannot run here, or None."""
    if not find_chromium():
        return "no chromium found (apt-get install chromium, or set $CHROMIUM to a Chromium/Chrome binary)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is missing (pip install playwright; no browser download needed)"
    return None


def find_chromium() -> str | None:
    """$CHROMIUM if set (a path or a command name), else Debian's chromium on the PATH."""
    if os.environ.get("CHROMIUM"):
        return shutil.which(os.environ["CHROMIUM"])
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_notebook(name: str) -> Path:
    """A notebook given as a path, or by its name in notebooks/ (with or without .ipynb)."""
    for candidate in (Path(name), NOTEBOOKS / name, NOTEBOOKS / f"{name}.ipynb"):
        if candidate.is_file() and candidate.suffix == ".ipynb":
            return candidate.resolve()
    raise SystemExit(f"no notebook {name!r} (neither a path nor a name in {NOTEBOOKS})")


def prepare_root(tmp: Path, notebooks: list[Path]) -> Path:
    """A server root that looks like the repository: copies of the notebooks and figures, links to everything else."""
    root = tmp / "root"
    (root / "notebooks").mkdir(parents=True)
    for notebook in notebooks:
        shutil.copy(notebook, root / "notebooks" / notebook.name)
    shutil.copytree(REPO / "figures", root / "figures")
    for entry in REPO.iterdir():
        if entry.name not in NOT_LINKED:
            (root / entry.name).symlink_to(entry)
    settings = tmp / "lab-settings"
    for name, values in LAB_SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(values))
    return root


def start_lab(root: Path, tmp: Path, port: int, token: str) -> subprocess.Popen:
    env = {**os.environ, "DISTILL_QUICK": "1", "PYTHONPATH": str(REPO), "DISTILL_CACHE": str(tmp / "cache"),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp / "lab-settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"), "JUPYTER_RUNTIME_DIR": str(tmp / "runtime")}
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers and CI often run as root
        command.append("--allow-root")
    server = subprocess.Popen(command, env=env, stdout=open(tmp / "lab.log", "w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 90
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"JupyterLab exited early:\n{(tmp / 'lab.log').read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
            return server
        except OSError:
            time.sleep(0.5)
    raise SystemExit("JupyterLab did not answer within 90 s")


def stop_lab(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


@dataclasses.dataclass
class Lab:
    """A running JupyterLab serving `root`, and the browser that talks to it."""
    root: Path
    port: int
    token: str
    browser: object

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/{path}?token={self.token}", method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None

    def shut_down_kernel(self, name: str) -> None:
        """Ends the session of notebooks/<name> (its kernel), so finished notebooks hold no memory or CPU."""
        for session in self.api("sessions"):
            if session.get("path") == f"notebooks/{name}":
                self.api(f"sessions/{session['id']}", method="DELETE")

    def new_page(self):
        return self.browser.new_page(viewport={"width": 1400, "height": 1100})

    def show(self, page, name: str, timeout_s: float = 120):
        """Opens notebooks/<name> in the page and waits for its cells and an idle kernel; returns the notebook."""
        page.goto(f"http://127.0.0.1:{self.port}/lab/tree/notebooks/{name}?token={self.token}")
        notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").first
        notebook.wait_for(timeout=timeout_s * 1000)
        cells = notebook.locator(".jp-Cell")
        expected = len(json.loads((self.root / "notebooks" / name).read_text())["cells"])
        wait_for(page, lambda: cells.count() >= expected, 60, "the notebook's cells")
        wait_for(page, lambda: kernel_idle(page), timeout_s, "an idle kernel")
        return notebook


def kernel_idle(page) -> bool:
    """The status bar reads "<kernel> | Idle": started, connected and not busy (the toolbar's indicator already
    reads idle while the kernel is still initializing, and a Run All pressed then can be lost)."""
    return page.locator(".jp-StatusBar-Widget", has_text="| Idle").count() > 0


def wait_for(page, condition, timeout_s: float, what: str):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        page.wait_for_timeout(250)
    raise CheckFailed(f"timed out after {timeout_s:.0f} s waiting for {what}")


def dialog_text(page) -> str | None:
    """The text of an open JupyterLab dialog (kernel died, restarting, ...), if one is open."""
    dialog = page.locator(".jp-Dialog")
    return dialog.first.inner_text().strip().replace("\n", " ")[:200] if dialog.count() else None


def menu(page, menu_name: str, item: str) -> None:
    """Clicks a menu bar item and then an entry of its menu, both by their exact label."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{re.escape(menu_name)}$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(item)}$")).click()


# --- Run All --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class NotebookRun:
    name: str
    seconds: float = 0.0
    code_cells: int = 0
    errors: list[Finding] = dataclasses.field(default_factory=list)
    notes: list[Finding] = dataclasses.field(default_factory=list)


def prompts(notebook) -> list[str]:
    """The input prompt of every code cell ("[3]:", "[*]:", "[ ]:"), in order."""
    return notebook.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()


def finished(page, notebook) -> bool:
    """Run All is over: the kernel is idle and no cell is running or queued ("[*]")."""
    return kernel_idle(page) and not any("*" in prompt for prompt in prompts(notebook))


def press_run_all(page, notebook, tries: int = 3) -> None:
    """Run > Run All Cells, until the kernel is busy or a cell queued or numbered (a click right after the page
    loaded can go unheard; pressing again once it has started would run the notebook twice)."""
    def started() -> bool:
        return not kernel_idle(page) or any(re.search(r"\[(\*|\d+)\]", p) for p in prompts(notebook))

    for _ in range(tries):
        notebook.locator(".jp-InputPrompt").first.click()  # the notebook is the current widget, in command mode
        menu(page, "Run", "Run All Cells")
        try:
            wait_for(page, started, 10, "Run All to start")
            return
        except CheckFailed:
            log("Run All did not start; pressing it again")
    raise CheckFailed(f"Run All did not start after {tries} tries")


def widget_tracebacks(notebook) -> list[Finding]:
    """Tracebacks shown inside widgets' output areas (a failing button callback): not part of the saved outputs."""
    found, cells = [], notebook.locator(".jp-Cell")
    for index in range(cells.count()):
        for text in cells.nth(index).locator(".widget-output").all_inner_texts():
            if TRACEBACK in text:
                found.append(Finding(index, "widget traceback", exception_summary(text)))
    return found


def save_and_read(lab: Lab, page, name: str, timeout_s: float = 60) -> dict:
    """Saves the notebook from the browser (File > Save Notebook) and returns the saved copy's JSON."""
    path = lab.root / "notebooks" / name
    before = path.stat().st_mtime_ns
    menu(page, "File", "Save Notebook")

    def saved() -> dict | None:  # the server writes in place: a new mtime and JSON that parses mean the whole copy
        if path.stat().st_mtime_ns == before:
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None

    notebook = wait_for(page, lambda: saved() or dialog_text(page), timeout_s, "the notebook to be saved")
    if isinstance(notebook, str):
        raise CheckFailed(f"saving opened a dialog: {notebook}")
    return notebook


def run_all(lab: Lab, name: str, timeout_s: float) -> NotebookRun:
    """Run All of notebooks/<name> in the browser, then its errors from the saved copy and the widgets' outputs."""
    from playwright.sync_api import Error as BrowserError  # a click or a wait of Playwright's that timed out

    result, page, start = NotebookRun(name), lab.new_page(), time.time()
    try:
        notebook = lab.show(page, name)
        log(f"{name}: open, {len(prompts(notebook))} code cells; Run > Run All Cells")
        start = time.time()
        press_run_all(page, notebook)
        deadline = start + timeout_s
        while not finished(page, notebook):
            if dialog_text(page):
                raise CheckFailed(f"a dialog opened: {dialog_text(page)}")
            if time.time() > deadline:
                raise CheckFailed(f"Run All did not finish within {timeout_s:.0f} s")
            page.wait_for_timeout(500)
        result.seconds = time.time() - start
        result.errors, result.notes, result.code_cells = scan_notebook(save_and_read(lab, page, name))
        result.errors += widget_tracebacks(notebook)
    except (CheckFailed, BrowserError) as failure:
        result.seconds = time.time() - start
        result.errors.append(Finding(-1, "check", str(failure).strip().split("\n")[0]))
    finally:
        page.close()
        lab.shut_down_kernel(name)
    return result


def report(result: NotebookRun) -> None:
    status = "ok" if not result.errors else f"{len(result.errors)} error(s)"
    log(f"{result.name}: Run All {result.seconds:.1f} s, {result.code_cells} code cells, {status}")
    for finding in result.errors:
        log(f"    ERROR cell {finding.cell} ({finding.kind}): {finding.first_line}")
    for finding in result.notes:
        log(f"    note  cell {finding.cell} (stderr): {finding.first_line}")


def summary_table(results: list[NotebookRun]) -> str:
    width = max([len("notebook")] + [len(r.name) for r in results])
    lines = [f"{'notebook':<{width}}  {'Run All':>9}  {'code cells':>10}  {'errors':>6}  {'stderr notes':>12}"]
    for r in results:
        lines.append(f"{r.name:<{width}}  {r.seconds:>8.1f}s  {r.code_cells:>10}  {len(r.errors):>6}"
                     f"  {len(r.notes):>12}")
    lines.append(f"{'total':<{width}}  {sum(r.seconds for r in results):>8.1f}s")
    return "\n".join(lines)


# --- the panel ------------------------------------------------------------------------------------------------------


def panel_cells(notebook: Path) -> list[int]:
    """Indices of the cells tagged "panel": what must run, in order, for the panel to work."""
    cells = json.loads(notebook.read_text())["cells"]
    indices = [i for i, c in enumerate(cells) if "panel" in c.get("metadata", {}).get("tags", [])]
    if not indices:
        raise SystemExit(f"{notebook} has no cells tagged 'panel'")
    return indices


def run_cell(page, cell, timeout_s: float) -> None:
    """Select a cell by its prompt, run it in place (Ctrl+Enter) and wait until its prompt shows a number."""
    prompt = cell.locator(".jp-InputPrompt").first
    prompt.scroll_into_view_if_needed()
    prompt.click()
    page.keyboard.press("Control+Enter")
    wait_for(page, lambda: re.search(r"\[\d+\]", prompt.inner_text()), timeout_s, "the cell to finish")
    outputs = cell.locator(".jp-OutputArea").first.inner_text()
    if TRACEBACK in outputs:
        raise CheckFailed(f"the cell raised an error:\n{outputs[-3000:]}")


def check_panel(lab: Lab, timeout_s: float) -> None:
    """Runs the panel's cells, moves the beta slider, clicks Run: a fresh computation and a new picture, or else
    CheckFailed."""
    cells = panel_cells(PANEL_NOTEBOOK)
    shutil.copy(PANEL_NOTEBOOK, lab.root / "notebooks" / PANEL_NOTEBOOK.name)  # fresh, even after its Run All
    page = lab.new_page()
    try:
        all_cells = lab.show(page, PANEL_NOTEBOOK.name).locator(".jp-Cell")
        log(f"panel: notebook open, kernel idle; running cells {cells}")
        for i in cells:
            start = time.time()
            run_cell(page, all_cells.nth(i), timeout_s)
            log(f"panel: cell {i} done in {time.time() - start:.1f} s")

        panel = all_cells.nth(cells[-1])
        status = panel.locator(".widget-html").first
        image = panel.locator(".widget-output img").first
        wait_for(page, lambda: status.inner_text().startswith("done"), timeout_s, "the first run's status")
        before = image.get_attribute("src")
        log(f"panel shown: status {status.inner_text()!r}, picture of {len(before)} characters")

        slider = panel.locator(".widget-slider").first  # beta
        readout_before = slider.locator(".widget-readout").inner_text()
        slider.locator(".noUi-handle").focus()
        page.keyboard.press("ArrowRight")
        wait_for(page, lambda: slider.locator(".widget-readout").inner_text() != readout_before, 10,
                 "the beta slider to move")
        wait_for(page, lambda: "press Run" in status.inner_text() or status.inner_text().startswith("done"),
                 30, "the panel to notice the slider")
        log(f"panel: beta {readout_before} -> {slider.locator('.widget-readout').inner_text()}: "
            f"status {status.inner_text()!r}")

        start = time.time()
        panel.locator("button", has_text="Run").click()
        wait_for(page, lambda: status.inner_text().startswith("done: computed")
                 and image.get_attribute("src") != before, timeout_s, "a new picture after Run")
        log(f"panel: Run: {status.inner_text()!r} after {time.time() - start:.1f} s; the picture changed")
        if "error" in status.inner_text():
            raise CheckFailed(f"the panel reports an error: {status.inner_text()}")

        SCREENSHOT.parent.mkdir(exist_ok=True)
        panel.locator(".jp-OutputArea").first.screenshot(path=str(SCREENSHOT))
        log(f"panel: screenshot {SCREENSHOT}")
    finally:
        page.close()
        lab.shut_down_kernel(PANEL_NOTEBOOK.name)


# --- main -----------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", nargs="+", metavar="NAME",
                        help="Run All of these only (names in notebooks/, with or without .ipynb, or paths); "
                             "skips the panel")
    parts = parser.add_mutually_exclusive_group()
    parts.add_argument("--panel-only", action="store_true", help="only notebook 07's panel")
    parts.add_argument("--run-all-only", action="store_true", help="only Run All of the notebooks, not the panel")
    parser.add_argument("--strict", action="store_true", help="fail (exit 1) instead of skipping without a browser")
    parser.add_argument("--timeout", type=float, default=240, help="seconds allowed for each panel cell and run")
    parser.add_argument("--notebook-timeout", type=float, default=1800, help="seconds allowed for each Run All")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the Run All results to this JSON file")
    args = parser.parse_args(argv)
    if args.panel_only and args.notebooks:
        parser.error("--panel-only and --notebooks exclude each other")
    return args


def run_record(results: list, argv: list[str] | None, load_before: tuple[float, ...]) -> dict:
    """What --json writes: each notebook's Run All, with the command, date, commit and machine load it ran under."""
    from distill_lib.course import git_state

    commit, dirty = git_state(REPO)
    args = sys.argv[1:] if argv is None else argv
    command = " ".join(["python tools/browser_check.py", *(shlex.quote(a) for a in args)])
    return {"command": command, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "commit": commit, "dirty": dirty, "cpus": os.cpu_count(),
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "notebooks": [dataclasses.asdict(r) for r in results]}


def record_markdown(record: dict) -> str:
    """The --json record as a page: each notebook's Run All time and errors, then how it was measured."""
    lines = ["# Run All of the notebooks in quick mode, in JupyterLab in headless Chromium", "",
             "| notebook | Run All (s) | code cells | errors |", "|---|---|---|---|"]
    lines += [f"| {n['name']} | {n['seconds']:.1f} | {n['code_cells']} | {len(n['errors'])} |"
              for n in record["notebooks"]]
    load = ", ".join(f"{x:.1f}" for x in record["load_average_before"])
    lines += ["", f"Command: `{record['command']}`. Date: {record['date']}. Commit: `{record['commit']}`"
              f"{' (with uncommitted changes)' if record['dirty'] else ''}. Machine: {record['cpus']} CPUs, load average "
              f"before the run {load} (1, 5, 15 min): times on a busy machine are longer than on an idle one.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    why = missing_prerequisite()
    if why:
        print(f"SKIP browser check: {why}")
        return 1 if args.strict else 0

    do_panel = not (args.run_all_only or args.notebooks)
    if args.panel_only:
        notebooks = []
    elif args.notebooks:
        notebooks = [resolve_notebook(name) for name in args.notebooks]
    else:
        notebooks = sorted(NOTEBOOKS.glob("*.ipynb"))
    if len({n.name for n in notebooks}) != len(notebooks):
        raise SystemExit("two notebooks with the same file name: their throw-away copies would collide")

    from playwright.sync_api import Error as BrowserError, sync_playwright

    start, results, panel_failure, load_before = time.time(), [], None, os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="browser_check_") as tmp_name, sync_playwright() as playwright:
        tmp = Path(tmp_name)
        root = prepare_root(tmp, notebooks)
        port, token = free_port(), secrets.token_hex(16)
        server = start_lab(root, tmp, port, token)
        log(f"JupyterLab on 127.0.0.1:{port} (pid {server.pid}), quick mode, empty cache")
        browser = playwright.chromium.launch(executable_path=find_chromium(), headless=True, args=["--no-sandbox"])
        lab = Lab(root, port, token, browser)
        try:
            for notebook in notebooks:  # first, so that no panel run fills the cache and shortens a Run All
                results.append(run_all(lab, notebook.name, args.notebook_timeout))
                report(results[-1])
            if do_panel:
                try:
                    check_panel(lab, args.timeout)
                    log("panel: PASS")
                except (CheckFailed, BrowserError) as failure:
                    panel_failure = str(failure)
                    log(f"panel: FAIL: {failure}")
        finally:
            browser.close()
            stop_lab(server)

    if results:
        print(summary_table(results), flush=True)
    if args.json:
        record = run_record(results, argv, load_before)
        args.json.write_text(json.dumps(record, indent=1))
        args.json.with_suffix(".md").write_text(record_markdown(record))
    failed = [r.name for r in results if r.errors] + (["the panel"] if panel_failure else [])
    log(f"{'FAIL: ' + ', '.join(failed) if failed else 'PASS'} in {time.time() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
