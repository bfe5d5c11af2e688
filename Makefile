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

.PHONY: all install run test test-unit bench lint generate lock clean

all: test

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

# What the agent alone needs (make run): the package and its runtime dependencies.
RUN_STAMP := $(VENV)/.installed-runtime

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

install: $(STAMP)

# With CONFIG=path (or $$GLANCE_CACHE_AGENT_CONFIG) runs on that config; otherwise on a
# demo cache under $(DEMO_DIR) (built once: sparse files, no real disk use).
run: $(RUN_STAMP)
ifeq ($(strip $(CONFIG)$(GLANCE_CACHE_AGENT_CONFIG)),)
	@config=$$($(BIN)/python -m glance_cache_agent.cli.demo $(DEMO_DIR)) && \
	echo "demo cache:  $(DEMO_DIR)/cache (config $$config)" && \
	echo "metrics:     http://127.0.0.1:9742/metrics   health: http://127.0.0.1:9742/healthz" && \
	echo "try:         $(BIN)/glance-cache-agent -c $$config status" && \
	echo "stop:        Ctrl-C" && \
	exec $(BIN)/glance-cache-agent -c $$config run
else
	$(BIN)/glance-cache-agent $(if $(CONFIG),-c $(CONFIG)) run
endif

# Every tier: tests/unit (in-process), tests/integration (the CLI and daemon as
# processes, Glance's real driver, crash and fault suites), tests/deploy
# (systemd, Ansible, Prometheus).
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The fast tier alone.
test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

# BENCH_ARGS goes to bench_driver.py; AGENT_BENCH_ARGS to bench_agent.py (scrape cost, CLI start-up).
AGENT_BENCH_ARGS ?=
# LOCK_BENCH_ARGS to bench_lock_etiquette.py (Glance's write waits beside a prune; exits 1 on a missed target).
LOCK_BENCH_ARGS ?=
# CENTRALIZED_BENCH_ARGS to bench_centralized.py (centralized_db prune on a throwaway PostgreSQL).
CENTRALIZED_BENCH_ARGS ?=

bench: $(STAMP)
	$(BIN)/python bench/bench_driver.py $(BENCH_ARGS)
	$(BIN)/python bench/bench_agent.py $(AGENT_BENCH_ARGS)
	$(BIN)/python bench/bench_lock_etiquette.py $(LOCK_BENCH_ARGS)
	$(BIN)/python bench/bench_centralized.py $(CENTRALIZED_BENCH_ARGS)

# config.example.yaml and the role's config-key argument specs, from the key table
# (src/glance_cache_agent/config/keys.py); tests/unit/test_config_keys.py fails on drift.
generate: $(RUN_STAMP)
	$(BIN)/python -m glance_cache_agent.config.generate

lint: $(STAMP)
	$(BIN)/python -m pip install --quiet ruff mypy types-PyYAML
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

# Refresh the Ansible role's lock of the runtime dependencies (pinned, with hashes) from
# pyproject.toml; needs the package index. tests/deploy/test_requirements_lock.py checks it.
lock: | $(BIN)/python
	$(BIN)/python ansible/update_lock.py

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
