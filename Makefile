# neural-router: `make demo` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
DATA   ?= ../shared/data
RUN    ?= runs/demo
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench clean sysdeps

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU build of torch from the local wheel cache, pinned; must come before the package so nothing pulls a CUDA build
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[cpu,dev]"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/neural-router demo --data $(DATA)/routerbench --output $(RUN)

# PostgreSQL server binaries for the feedback-store tests (they start their own throwaway server);
# bubblewrap, the sandbox the code_tests scorer runs model-written code in
sysdeps:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null)
	@test -x /usr/bin/bwrap || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null)

test: setup sysdeps
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/bench_predictor.py --router $(RUN)/onnx --trained $(RUN)/router

clean:
	rm -rf $(VENV) runs .pytest_cache
