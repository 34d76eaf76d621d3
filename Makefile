# Two commands on a fresh machine: `make run` (the default offline job) and `make test` (the test suite).
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1

.PHONY: install run test test-all bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	# torch first, pinned: these wheels lie on local disk (a newer torch would download GBs)
	$(VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) run.py

test: install
	$(PY) -m pytest -q

test-all: install  # also the slow and real-data checks
	$(PY) -m pytest -q -m ""

clean:
	rm -rf $(VENV) .pytest_cache .cache
