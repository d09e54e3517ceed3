# `make demo` and `make test` are the whole setup on a fresh clone: they build .venv as needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PADDLE := paddlepaddle==3.3.1
# The CPU torch wheel (the 'torch' extra, for reading pytorch_model.bin in tests).
TORCH := torch==2.13.0

# `make test BROWSER=0` neither installs chromium nor runs the browser test.
BROWSER ?= 1

.PHONY: demo test test-slow lint bench browser clean-venv

$(VENV)/.core: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(PADDLE)
	$(PIP) install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.core
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[test,interop,serve]"
	touch $@

# The serving page's browser test drives Debian's chromium through Selenium. When they are missing and
# make runs as root, this installs chromium and chromium-driver with apt-get (about 500 MB).
# Without root or apt-get, or with BROWSER=0, the browser test skips (it says why); the rest of `make test` runs.
browser:
	@if [ "$(BROWSER)" = 0 ]; then echo "BROWSER=0: no chromium; tests/test_serve_browser.py will skip"; \
	elif command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	else (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver) || \
		echo "chromium/chromedriver not installed: tests/test_serve_browser.py will skip"; fi

demo: $(VENV)/.core
	$(VENV)/bin/paddle-glm demo

test: $(VENV)/.test browser
	PADDLE_GLM_BROWSER_TEST=$(BROWSER) $(PY) -m pytest -q -m "not slow" tests

# ruff, configured in pyproject.toml; CI runs it before the tests.
lint: $(VENV)/.test
	$(VENV)/bin/ruff check .

# The README commands that take a minute or more each (tests marked slow); CI runs them after `make test`.
test-slow: $(VENV)/.test
	$(PY) -m pytest -q -m slow tests

bench: $(VENV)/.test
	$(PY) benchmarks/run_all.py

clean-venv:
	rm -rf $(VENV)
