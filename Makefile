# Two commands for a fresh machine:  `make demo`  and  `make test`  (see README.md).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    ?= runs/demo
PROFILE ?= demo

.PHONY: demo test lint lab notebooks venv clean figures screenshot book

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m workbench demo --profile $(PROFILE) --out $(OUT)

test: $(STAMP)
	$(PY) -m pytest -q

# The README's figures (figures/): copied from a finished demo (`make demo`, or OUT=DIR for another reproduce
# output). Runs and tests never write into the repository; this target is the only thing that refreshes them.
figures:
	@test -f $(OUT)/report.md -a -d $(OUT)/figures || { echo "no finished demo in $(OUT): run 'make demo' first (or pass OUT=DIR)" >&2; exit 2; }
	cp $(OUT)/figures/*.png $(OUT)/figures/*.svg figures/
	@echo "figures/ refreshed from $(OUT)/figures (review with git diff --stat figures/)"

# The committed screenshot of notebook 04 in JupyterLab + Chromium (figures/loss_playground_browser.png).
screenshot: $(STAMP)
	WORKBENCH_SCREENSHOT_DIR=figures $(PY) -m pytest -q tests/test_browser.py

lint: $(STAMP)
	$(PY) -m ruff check workbench tests benchmarks notebooks

# .ipynb from the jupytext sources (notebooks/*.py, paired both ways; the .ipynb are git-ignored).
notebooks: $(STAMP)
	$(PY) -m jupytext --sync notebooks/*.py

# JupyterLab on the notebooks (saving a notebook there also updates its .py source). LAB_ARGS=... adds options;
# SMOKE=1 runs every notebook's kernel in smoke mode (tiny world, seconds; numbers only show that the code runs).
LAB_ARGS ?=
SMOKE ?= 0
lab: $(STAMP) notebooks
	WORKBENCH_SMOKE=$(SMOKE) $(VENV)/bin/jupyter lab --ServerApp.root_dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# A static HTML site of the executed notebooks (figures included) with an index.html: runs/book/ (BOOK=DIR).
# Full mode by default; SMOKE=1 for a quick check. BOOK_ARGS="--only 00_quickstart" runs some notebooks only.
BOOK ?= runs/book
BOOK_ARGS ?=
book: $(STAMP)
	WORKBENCH_SMOKE=$(SMOKE) OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) benchmarks/book.py --out $(BOOK) $(BOOK_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
