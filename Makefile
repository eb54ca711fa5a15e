SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CHECKPOINT ?= checkpoints/model.pt
RUN_PACKAGES := dataset-fashion-mnist
TEST_PACKAGES := dataset-fashion-mnist prometheus docker-compose nginx chromium chromium-driver
# checkov (the manifest checks of `make test`) lives in a venv of its own: its pinned
# dependencies would downgrade the project's (packaging, networkx, ...).
CHECKOV_VENV := .venv-checkov
BENCH_PACKAGES := dataset-fashion-mnist wrk

.PHONY: setup setup-dev run train test lint format bench docker-test clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

## setup: create .venv with the project and the Debian dataset package
setup: $(VENV)/.installed
	scripts/ensure-apt.sh $(RUN_PACKAGES)

setup-dev: $(VENV)/.installed-dev
	scripts/ensure-apt.sh $(TEST_PACKAGES)
	scripts/ensure-kubectl.sh $(BIN)/kubectl-1.20

$(CHECKOV_VENV)/.installed:
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q 'checkov>=3.2,<4'
	touch $@

$(CHECKPOINT): | setup
	$(BIN)/convserve-train --output $(CHECKPOINT)

## train: (re)train the default model into $(CHECKPOINT)
train: setup
	$(BIN)/convserve-train --output $(CHECKPOINT)

## run: train the default model if missing, then serve it with gunicorn on CONVSERVE_BIND
run: setup $(CHECKPOINT)
	CONVSERVE_MODEL_PATH=$(CHECKPOINT) $(BIN)/gunicorn -c python:service.gunicorn_conf 'service:create_app()'

lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## test: lint, type-check and run the whole suite (what CI runs); trains the default model
## first if it is missing, since a test serves it real Fashion-MNIST images
test: lint $(CHECKPOINT) $(CHECKOV_VENV)/.installed
	$(BIN)/pytest
	$(MAKE) docker-test

## docker-test: build the image and run the compose stack on a Docker engine started for the test
docker-test: setup-dev
	PYTHON=$(abspath $(BIN)/python) deploy/test/docker-test.sh

## bench: drive the real server with wrk (S and M scenarios, batching on/off, HTTP and model
## limits, worker RSS) and write bench/results.md; then one explain's cost and /v1/predict
## beside explain traffic (bench/explain-results.md)
bench: setup-dev
	scripts/ensure-apt.sh $(BENCH_PACKAGES)
	$(BIN)/python -m bench
	$(BIN)/python -m bench.explain

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .pytest_cache .mypy_cache .ruff_cache
