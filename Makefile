# glance-cache-agent: the two set-up commands are `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= test,interop
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: all install run test bench lint clean

all: test

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

install: $(STAMP)

run: $(STAMP)
	@echo "make run: the agent daemon (scheduler, metrics on 127.0.0.1:9742, demo cache) is not yet available;"
	@echo "          the driver core is installed in $(VENV): try '$(BIN)/python -m pytest' or 'make bench'."

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/bench_driver.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/python -m pip install --quiet ruff mypy types-PyYAML
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
