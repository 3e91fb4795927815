# Two entry points for a fresh machine: `make demo` and `make test` (`make test-fast` while working).
# Each creates the virtual environment and installs everything it needs first: dbprompt (the
# product) and dbprompt-lab (lab/: the synthetic world, the proxy, the method comparison).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-oldest browser

$(STAMP): pyproject.toml lab/pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]' -e './lab[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dbprompt-lab demo

browser:
	@command -v chromium >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)

# Everything: the product's tests, then the lab's (CI runs this).
test: $(STAMP) browser
	$(PY) -m pytest tests
	cd lab && ../$(PY) -m pytest tests

# All but the slow tests (Ray, the browser, torchrun, large indexes): a few minutes.
test-fast: $(STAMP)
	$(PY) -m pytest tests -m "not slow"
	cd lab && ../$(PY) -m pytest tests -m "not slow"

# The fast tests on the oldest torch/torchvision pyproject.toml accepts (the other end of its ranges).
test-oldest:
	python3 -m venv .venv-oldest
	.venv-oldest/bin/python -m pip install -q -c constraints-oldest.txt -e '.[test]' -e './lab[test]'
	.venv-oldest/bin/python -m pytest tests -m "not slow"
	cd lab && ../.venv-oldest/bin/python -m pytest tests -m "not slow"
