# glance-cache-agent: the two set-up commands are `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= test,interop
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
PYTEST_ARGS ?=
BENCH_ARGS ?=
CONFIG ?=
DEMO_DIR ?= .demo

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

# With CONFIG=path (or $$GLANCE_CACHE_AGENT_CONFIG) runs on that config; otherwise on a
# demo cache under $(DEMO_DIR) (built once: sparse files, no real disk use).
run: $(STAMP)
ifeq ($(strip $(CONFIG)$(GLANCE_CACHE_AGENT_CONFIG)),)
	@config=$$($(BIN)/python -m glance_cache_agent.demo $(DEMO_DIR)) && \
	echo "demo cache:  $(DEMO_DIR)/cache (config $$config)" && \
	echo "metrics:     http://127.0.0.1:9742/metrics   health: http://127.0.0.1:9742/healthz" && \
	echo "try:         $(BIN)/glance-cache-agent -c $$config status" && \
	echo "stop:        Ctrl-C" && \
	exec $(BIN)/glance-cache-agent -c $$config run
else
	$(BIN)/glance-cache-agent $(if $(CONFIG),-c $(CONFIG)) run
endif

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# BENCH_ARGS goes to bench_driver.py; AGENT_BENCH_ARGS to bench_agent.py (scrape cost, CLI start-up).
AGENT_BENCH_ARGS ?=
# LOCK_BENCH_ARGS to bench_lock_etiquette.py (Glance's write waits beside a prune; exits 1 on a missed target).
LOCK_BENCH_ARGS ?=

bench: $(STAMP)
	$(BIN)/python bench/bench_driver.py $(BENCH_ARGS)
	$(BIN)/python bench/bench_agent.py $(AGENT_BENCH_ARGS)
	$(BIN)/python bench/bench_lock_etiquette.py $(LOCK_BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/python -m pip install --quiet ruff mypy types-PyYAML
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
