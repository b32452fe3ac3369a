# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv and install torch from constraints.txt first, so that
# pip never resolves an unpinned (multi-GB CUDA) torch. `make demo` then installs lrtune
# alone (what the demo runs); `make test`, `lint`, `test-slow` and `bench` install it with the
# dev and bench extras (pytest, ruff, playwright, schemathesis, torch-lr-finder, ...).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
PYTEST_ARGS ?=
# make test and make test-slow run their tests in 2 processes (pytest-xdist; each has its own
# PostgreSQL scratch database); the `serial` tests, which restart PostgreSQL under every process,
# run alone after them.
TEST_PROCESSES ?= 2

.PHONY: setup demo-setup demo test test-slow lint bench clean

setup: $(STAMP)

demo-setup: $(DEMO_STAMP)

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# lrtune with the dev, bench and integration extras; it holds everything the demo needs too.
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev,bench,lightning,hf,ray]'
	touch $(STAMP) $(DEMO_STAMP)

# lrtune and its dependencies only: the demo's store is SQLite, so not even the postgres extra.
$(DEMO_STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e .
	touch $(DEMO_STAMP)

# The service on 127.0.0.1:8000 with an embedded worker; submits the built-in job over HTTP,
# prints the dashboard's URL and the recommendation, keeps serving until Ctrl-C.
# `make demo DEMO_ARGS=--exit-when-done` stops once the recommendation has arrived.
DEMO_ARGS ?=
demo: demo-setup
	$(VENV)/bin/lrtune serve --database sqlite:///out/lrtune.db \
		--submit examples/digits_mlp.yaml $(DEMO_ARGS)

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# `make test`: everything but the long end-to-end tests (under 10 minutes on 2 cores);
# `make test-slow`: those (fleets, kill -9, database restarts, signals, the browser), which
# .ci/run runs too.
test: lint
	$(PY) -m pytest -m "not slow and not serial" -n $(TEST_PROCESSES) $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -m "slow and not serial" -n $(TEST_PROCESSES) $(PYTEST_ARGS)
	$(PY) -m pytest -m serial $(PYTEST_ARGS)

bench: setup
	$(PY) bench/tasks.py
	$(PY) bench/agents.py
	$(PY) bench/finder.py
	$(PY) bench/search.py
	$(PY) bench/suggest.py
	$(PY) bench/api.py
	$(PY) bench/workers.py
	$(PY) bench/population.py
	$(PY) bench/quality.py

clean:
	rm -rf $(VENV) out artifacts .pytest_cache .ruff_cache
