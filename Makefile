# One command each: `make demo` sets up and materializes the pipeline on the local profile
# (`make experiment` adds one student per arm; `make study` ranks diversity measures by student accuracy),
# `make test` sets up, lints (ruff), type-checks (mypy) and runs the test suite,
# `make mutation` runs mutmut module by module (hours; not in CI).
PY := .venv/bin/python

.PHONY: setup demo experiment study test bench ui mutation
setup:
	bash scripts/setup.sh

demo: setup
	$(PY) -m prismatic_assets.interfaces.cli demo

experiment: setup
	$(PY) -m prismatic_assets.interfaces.cli experiment

study: setup
	$(PY) -m prismatic_assets.interfaces.cli study

# The linter and the type checker first: they take seconds to minutes and fail fast. The suite runs
# in TEST_WORKERS processes, a test file to a worker (one test: .venv/bin/python -m pytest tests/x.py),
# and names its 25 slowest tests at the end: where the time went, on any machine.
TEST_WORKERS ?= 2
test: setup
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25

bench: setup
	$(PY) -m benchmarks.run_all

# Ctrl-C stops the webserver, the daemon and the code server within seconds (tests/test_ui.py).
ui: setup
	DAGSTER_HOME=$(CURDIR) .venv/bin/dg dev -h 127.0.0.1 -p 3000

mutation: setup
	$(PY) -m pip install -c constraints.txt -e ".[mutation]"
	$(PY) scripts/mutation.py
	$(PY) scripts/mutation.py --summary
