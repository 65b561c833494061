# Two commands for a fresh machine:  `make demo`  and  `make test`  (see README.md).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    ?= runs/demo
PROFILE ?= demo

.PHONY: demo test lint lab notebooks venv clean

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

lint: $(STAMP)
	$(PY) -m ruff check workbench tests benchmarks notebooks

# .ipynb from the jupytext sources (notebooks/*.py, paired both ways; the .ipynb are git-ignored).
notebooks: $(STAMP)
	$(PY) -m jupytext --sync notebooks/*.py

# JupyterLab on the notebooks (saving a notebook there also updates its .py source). LAB_ARGS=... adds options.
LAB_ARGS ?=
lab: $(STAMP) notebooks
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
