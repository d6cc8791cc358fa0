# softipu: `make demo` and `make test` work on a fresh clone with only python3 on the PATH.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp
# NOTE: ruff fails on a path that does not exist, so lint only the folders this checkout has.
LINT_PATHS := $(wildcard src tests bench examples)
BENCHES    := $(wildcard bench/bench_*.py)

.PHONY: venv test demo bench lint clean

venv: $(STAMP)

# Reinstalls only when pyproject.toml changes; the stamp is touched last, so a failed install reruns.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

test: venv
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/python -m pytest -n 2 tests

demo: venv
	$(BIN)/python examples/demo.py
	$(BIN)/python examples/demo_torch.py

# Each benchmark prints one JSON line per result on stdout; the banner goes to stderr.
bench: venv
	@set -e; for f in $(BENCHES); do echo "== $$f" >&2; $(BIN)/python $$f; done

lint: venv
	$(BIN)/ruff check $(LINT_PATHS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .hypothesis reports
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
