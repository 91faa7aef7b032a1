# Development entry points.  Each target creates (or reuses) its own virtual environment in
# .venv, so nothing depends on packages installed by hand.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: demo test bench dc3 clean

$(VENV)/.core: pyproject.toml requirements/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements/cpu.txt
	$(PIP) -e ".[test,demo]"
	touch $@

$(VENV)/.bench: $(VENV)/.core
	$(PIP) -e ".[test,demo,bench]"
	# qpth declares numpy<2 but runs with numpy 2; --no-deps keeps the resolver from aborting
	$(PIP) --no-deps qpth
	touch $@

demo: $(VENV)/.core          ## short end-to-end demo (train an MLP with a projection layer)
	$(VENV)/bin/polyproj demo --out runs/demo

test: $(VENV)/.core          ## the test suite
	$(PY) -m pytest

bench: $(VENV)/.bench        ## peers side by side; JSON + PNG under benchmarks/results
	cd benchmarks && ../$(PY) bench_polyhedron.py --out results

dc3: $(VENV)/.core           ## learning to optimize: DC3's simple QP with a per-sample projection layer
	$(PY) experiments/dc3_simple_qp.py --out runs/dc3

clean:
	rm -rf $(VENV) runs
