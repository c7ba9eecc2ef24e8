# absa: `make demo` trains the quickstart preset; `make test` runs the test suite. Both install into .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast clean

install: $(STAMP)

# Reinstall whenever the project's metadata changes. torch/torchvision are pinned to ranges that the
# locally served 2.14.1 / 0.29.1 satisfy.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: install
	$(BIN)/absa train quickstart

# The suite runs in a network namespace whose only interface is loopback (where unprivileged namespaces are
# allowed), so every Ray process it starts -- the shared session cluster included -- is reachable from this machine
# only, as absa's own local cluster is; tests/conftest.py brings the loopback up.
ISOLATE := $(shell unshare --user --map-root-user --net true >/dev/null 2>&1 && echo unshare --user --map-root-user --net --)

test: install
	$(ISOLATE) $(BIN)/python -m pytest -q --durations=20  # the slowest tests, in every CI log: the suite has a 15-minute budget

test-fast: install
	$(ISOLATE) $(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) build dist *.egg-info runs .pytest_cache
