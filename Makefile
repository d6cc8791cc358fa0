# softipu: `make demo` and `make test` work on a fresh clone with only python3 on the PATH.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp
# NOTE: ruff fails on a path that does not exist, so lint only the folders this checkout has.
LINT_PATHS := $(wildcard src tests bench examples)
BENCHES    := $(wildcard bench/bench_*.py)

.PHONY: venv test demo bench lint clean browser screenshots

venv: $(STAMP)

# Reinstalls only when pyproject.toml changes; the stamp is touched last, so a failed install reruns.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

test: venv browser
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/python -m pytest -n 2 tests

# The browser tests (tests/test_browser.py) drive Debian's chromium through playwright (a [dev]
# package); no browser is downloaded. Installed with apt when missing and we may (root or sudo -n);
# elsewhere the browser tests skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium \
	      || echo "note: chromium not installed; the browser tests will skip"; \
	  else echo "note: no apt-get; install Chromium yourself or the browser tests skip"; fi; }

# docs/images: the report page's views for the README, from the demo's BERT report (run `make demo` first;
# COMPARE=path/to/other.report.json for the compare view, default reports/cnn.report.json).
screenshots: venv browser
	$(BIN)/python docs/screenshots.py reports docs/images $(COMPARE)

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
