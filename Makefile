# Two commands on a fresh machine:  make run  (set up + distill & evaluate)  and  make test  (every test).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Pinned torch: on the project's offline machines these come from local files; elsewhere from PyPI.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
# The data folder, for commands that read $DISTILL_DATA: distill_lib/course.py decides (one rule for the whole project).
export DISTILL_DATA ?= $(shell $(PYTHON) distill_lib/course.py data-root)

.PHONY: setup run test unit notebooks lab clean-notebooks browser-check

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

setup: $(VENV)/.installed

# A first look in about two minutes on 2 cores; the output names the full-budget command (the same without
# --first-look). One thread, as for the tests: on a busy machine two threads spin against the other jobs.
run: setup
	OMP_NUM_THREADS=1 $(PY) -m distill_lib run --first-look

unit: setup
	$(PY) -m pytest tests

notebooks: setup
	DISTILL_QUICK=1 MPLBACKEND=Agg $(PY) -m pytest --nbval-lax -p no:cacheprovider notebooks

# JupyterLab on the course in quick mode (digits, seconds-sized budgets); `make lab QUICK=0` for the full budgets.
QUICK ?= 1
lab: setup
	DISTILL_QUICK=$(QUICK) $(PY) -m jupyter lab notebooks

# One thread per process (the notebook kernels too): on 2 shared cores, two intra-op threads spin against any other job.
test: setup
	OMP_NUM_THREADS=1 DISTILL_QUICK=1 MPLBACKEND=Agg $(PY) -m pytest tests --nbval-lax notebooks

# Notebook 07's widget panel in real JupyterLab + headless Chromium (Playwright); skips without Debian's chromium
# (BROWSER_CHECK_FLAGS=--strict: fail instead).
browser-check: setup
	$(PY) -m pip install -q playwright || echo "playwright could not be installed; the check will skip"
	$(PY) tools/browser_check.py $(BROWSER_CHECK_FLAGS)
