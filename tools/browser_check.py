"""Browser check of notebook 07's panel: do the widgets really work where students use them?

    python tools/browser_check.py            # or: make browser-check

Starts JupyterLab on loopback (a free port, a random token) serving a throw-away copy of notebook 07 (so nothing in
the repository is ever saved over), opens it in headless Chromium driven by Playwright, runs the cells the panel
needs (tagged "panel" in the notebook), moves the beta slider with the keyboard, clicks Run, and checks that the
status reports a fresh computation and that the picture in the output area changed. Saves a screenshot of the panel
to figures/07_ablations_browser_check.png. Runs in quick mode with an empty cache, so the panel really computes.

Needs Debian's chromium (``apt-get install chromium``; or $CHROMIUM) and ``pip install playwright`` (its own browser
download is not needed). When either is missing it prints SKIP and exits 0 (exit 1 with --strict).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "07_ablations.ipynb"
SCREENSHOT = REPO / "figures" / "07_ablations_browser_check.png"
# JupyterLab user settings for the check: every cell in the DOM (no windowing), no autosave, no news pop-up.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}


def log(message: str) -> None:
    print(f"[browser-check {time.strftime('%H:%M:%S')}] {message}", flush=True)


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


def panel_cells(notebook: Path) -> list[int]:
    """Indices of the cells tagged "panel": what must run, in order, for the panel to work."""
    cells = json.loads(notebook.read_text())["cells"]
    indices = [i for i, c in enumerate(cells) if "panel" in c.get("metadata", {}).get("tags", [])]
    if not indices:
        raise SystemExit(f"{notebook} has no cells tagged 'panel'")
    return indices


def prepare_root(tmp: Path) -> Path:
    """A server root holding a copy of the notebook and a link to the package (the notebook finds it by walking up)."""
    root = tmp / "root"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(NOTEBOOK, root / "notebooks" / NOTEBOOK.name)
    (root / "distill_lib").symlink_to(REPO / "distill_lib")
    settings = tmp / "lab-settings"
    for name, values in LAB_SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(values))
    return root


def start_lab(root: Path, tmp: Path, port: int, token: str) -> subprocess.Popen:
    env = {**os.environ, "DISTILL_QUICK": "1", "PYTHONPATH": str(REPO), "DISTILL_CACHE": str(tmp / "cache"),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "JUPYTERLAB_SETTINGS_DIR": str(tmp / "lab-settings"),
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


def run_cell(page, cell, timeout_s: float) -> None:
    """Select a cell by its prompt, run it in place (Ctrl+Enter) and wait until its prompt shows a number."""
    prompt = cell.locator(".jp-InputPrompt").first
    prompt.scroll_into_view_if_needed()
    prompt.click()
    page.keyboard.press("Control+Enter")
    wait_for(page, lambda: re.search(r"\[\d+\]", prompt.inner_text()), timeout_s, "the cell to finish")
    outputs = cell.locator(".jp-OutputArea").first.inner_text()
    if "Traceback (most recent call last)" in outputs:
        raise SystemExit(f"the cell raised an error:\n{outputs[-3000:]}")


def wait_for(page, condition, timeout_s: float, what: str):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        page.wait_for_timeout(250)
    raise SystemExit(f"timed out after {timeout_s:.0f} s waiting for {what}")


def check(port: int, token: str, chromium: str, cells: list[int], timeout_s: float) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(f"http://127.0.0.1:{port}/lab/tree/notebooks/{NOTEBOOK.name}?token={token}")
            notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").first
            notebook.wait_for(timeout=120_000)
            all_cells = notebook.locator(".jp-Cell")
            wait_for(page, lambda: all_cells.count() > max(cells), 60, "the notebook's cells")
            wait_for(page, lambda: page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count(),
                     120, "an idle kernel")
            log(f"notebook open, kernel idle; running cells {cells}")
            for i in cells:
                start = time.time()
                run_cell(page, all_cells.nth(i), timeout_s)
                log(f"cell {i} done in {time.time() - start:.1f} s")

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
            log(f"beta {readout_before} -> {slider.locator('.widget-readout').inner_text()}: "
                f"status {status.inner_text()!r}")

            start = time.time()
            panel.locator("button", has_text="Run").click()
            wait_for(page, lambda: status.inner_text().startswith("done: computed")
                     and image.get_attribute("src") != before, timeout_s, "a new picture after Run")
            log(f"Run: {status.inner_text()!r} after {time.time() - start:.1f} s; the picture changed")
            if "error" in status.inner_text():
                raise SystemExit(f"the panel reports an error: {status.inner_text()}")

            SCREENSHOT.parent.mkdir(exist_ok=True)
            panel.locator(".jp-OutputArea").first.screenshot(path=str(SCREENSHOT))
            log(f"screenshot: {SCREENSHOT}")
        finally:
            browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strict", action="store_true", help="fail (exit 1) instead of skipping without a browser")
    parser.add_argument("--timeout", type=float, default=240, help="seconds allowed for each cell and each panel run")
    args = parser.parse_args()
    why = missing_prerequisite()
    if why:
        print(f"SKIP browser check: {why}")
        return 1 if args.strict else 0

    start = time.time()
    cells = panel_cells(NOTEBOOK)
    with tempfile.TemporaryDirectory(prefix="browser_check_") as tmp_name:
        tmp = Path(tmp_name)
        root = prepare_root(tmp)
        port, token = free_port(), secrets.token_hex(16)
        server = start_lab(root, tmp, port, token)
        log(f"JupyterLab on 127.0.0.1:{port} (pid {server.pid})")
        try:
            check(port, token, find_chromium(), cells, args.timeout)
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    log(f"PASS in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
