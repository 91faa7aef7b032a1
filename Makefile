# Development entry points.  Each target creates (or reuses) its own virtual environment in
# .venv, so nothing depends on packages installed by hand.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: demo portfolio test bench dc3 clean

$(VENV)/.core: pyproject.toml requirements/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements/cpu.txt
	$(PIP) -e ".[test,demo]"
	# qpth declares numpy<2 but runs with numpy 2; --no-deps keeps the resolver from aborting
	$(PIP) --no-deps qpth
	touch $@

$(VENV)/.bench: $(VENV)/.core
	$(PIP) -e ".[test,demo,bench]"
	touch $@

demo: $(VENV)/.core          ## main job: portfolio allocation on S&P 500 data, quick mode (about a minute)
	$(VENV)/bin/polyproj portfolio --quick --out runs/portfolio-quick

portfolio: $(VENV)/.core     ## the full portfolio table, peers included
	$(VENV)/bin/polyproj portfolio --peers --out runs/portfolio

test: $(VENV)/.core          ## the test suite
	$(PY) -m pytest

bench: $(VENV)/.bench        ## peers side by side; JSON + PNG under benchmarks/results
	cd benchmarks && ../$(PY) bench_polyhedron.py --out results

dc3: $(VENV)/.core           ## learning to optimize: DC3's simple QP with a per-sample projection layer
	$(PY) experiments/dc3_simple_qp.py --out runs/dc3

clean:
	rm -rf $(VENV) runs
