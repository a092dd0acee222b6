# kdbench: every target builds .venv first when it is missing or older than pyproject.toml.
SUITE   ?= smoke
RESULTS ?= results
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.kdbench-installed

.PHONY: suite test report example lint check venv clean-venv

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch/torchvision pinned exactly: these lie on the local disk (a looser pin downloads several GB)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev,track]'
	@touch $(STAMP)

venv: $(STAMP)

## make suite SUITE=<name>: run suites/<name>.yaml (default smoke), then print its report
suite: $(STAMP)
	$(PY) -m kdbench run $(SUITE) --results $(RESULTS)
	$(PY) -m kdbench.report $(RESULTS)/$(notdir $(basename $(SUITE)))

## make report: the report of everything under $(RESULTS)
report: $(STAMP)
	$(PY) -m kdbench.report $(RESULTS)

## make example: the README's example report (smoke + gendd_ablation) into results/examples/
example: $(STAMP)
	$(PY) -m kdbench run smoke --results $(RESULTS)
	$(PY) -m kdbench run gendd_ablation --results $(RESULTS)
	$(PY) -m kdbench.report $(RESULTS)/smoke --out results/examples/smoke > /dev/null
	$(PY) -m kdbench.report $(RESULTS)/gendd_ablation --out results/examples/gendd_ablation > /dev/null

## make test: the whole test suite
test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .

## make check: exactly what CI runs
check: lint test

clean-venv:
	rm -rf $(VENV)
