"""tools/browser_check.py: what counts as an error in a saved notebook, and Run All in a real browser catching every
kind (a raised exception, a traceback printed to stderr, one shown in a widget) while letting warnings through."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "browser_check.py"
spec = importlib.util.spec_from_file_location("browser_check", TOOL)
browser_check = sys.modules["browser_check"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
spec.loader.exec_module(browser_check)

PRINTED_TRACEBACK = """import traceback
try:
    1 / 0
except ZeroDivisionError:
    traceback.print_exc()
print("carried on")"""
WARNING = 'import warnings\nwarnings.warn("only a warning")'
# An exception caught by a widget's Output (as in a failing button callback): shown in the widget, not in the cell.
IN_A_WIDGET = """import ipywidgets
output = ipywidgets.Output()
display(output)
with output:
    raise KeyError("inside a widget")"""


def code(source, outputs=(), count=1):
    return {"cell_type": "code", "source": source, "metadata": {}, "execution_count": count, "outputs": list(outputs)}


def stream(name, text):
    return {"output_type": "stream", "name": name, "text": text}


def test_scan_notebook_counts_errors_and_keeps_warnings_apart():
    notebook = {"cells": [
        {"cell_type": "markdown", "source": "# title", "metadata": {}},
        code("print('fine')", [stream("stdout", "test error: 3 %\nValueError: is only text on stdout\n")]),
        code("raise", [{"output_type": "error", "ename": "ValueError", "evalue": "bad", "traceback": []}]),
        code(PRINTED_TRACEBACK, [stream("stderr", ["Traceback (most recent call last):\n", '  File "<x>", line 3\n',
                                                   "ZeroDivisionError: division by zero\n"])]),
        code("log", [stream("stderr", "torch.OutOfMemoryError: out of memory\n")]),
        code(WARNING, [stream("stderr", "/x.py:2: UserWarning: only a warning\n  warnings.warn(\n")]),
        code("print('after')\nmore", count=None),
    ]}
    errors, notes, code_cells = browser_check.scan_notebook(notebook)
    assert code_cells == 6
    assert [(e.cell, e.kind, e.first_line) for e in errors] == [
        (2, "error", "ValueError: bad"),
        (3, "stderr traceback", "ZeroDivisionError: division by zero"),
        (4, "stderr traceback", "torch.OutOfMemoryError: out of memory"),
        (6, "not run", "print('after')"),
    ]
    assert [(n.cell, n.first_line) for n in notes] == [(5, "/x.py:2: UserWarning: only a warning")]


def write_notebook(path, sources):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    notebook.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nbformat.write(notebook, path)


@pytest.mark.skipif(browser_check.missing_prerequisite() is not None, reason="needs chromium and playwright")
def test_run_all_in_the_browser_catches_raised_and_printed_errors(tmp_path):
    write_notebook(tmp_path / "broken.ipynb", ['print("start")', PRINTED_TRACEBACK, WARNING, IN_A_WIDGET,
                                               'raise ValueError("on purpose")', 'print("never reached")'])
    write_notebook(tmp_path / "clean.ipynb", ['import os\nassert os.environ["DISTILL_QUICK"] == "1"', WARNING])
    summary = tmp_path / "summary.json"
    done = subprocess.run([sys.executable, str(TOOL), "--strict", "--notebook-timeout", "120", "--json", str(summary),
                           "--notebooks", str(tmp_path / "broken.ipynb"), str(tmp_path / "clean.ipynb")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    record = json.loads(summary.read_text())
    assert record["command"].startswith("python tools/browser_check.py") and record["date"] and record["cpus"]
    broken, clean = record["notebooks"]
    assert "| notebook | Run All (s)" in summary.with_suffix(".md").read_text()
    assert (broken["name"], broken["code_cells"], clean["name"], clean["code_cells"]) == \
        ("broken.ipynb", 6, "clean.ipynb", 2)
    assert [(e["cell"], e["kind"], e["first_line"]) for e in broken["errors"]] == [
        (1, "stderr traceback", "ZeroDivisionError: division by zero"),
        (4, "error", "ValueError: on purpose"),
        (5, "not run", 'print("never reached")'),
        (3, "widget traceback", "KeyError: 'inside a widget'"),
    ]
    assert clean["errors"] == []
    warned = [[(n["cell"], "UserWarning: only a warning" in n["first_line"]) for n in result["notes"]]
              for result in (broken, clean)]
    assert warned == [[(2, True)], [(1, True)]]
    assert "broken.ipynb" in done.stdout and "FAIL: broken.ipynb" in done.stdout
