# reelpulse: `make demo` sets everything up and runs the platform on the local stack;
# `make test` runs every test tier. `make help` lists every target.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SECONDS ?= 60
HISTORY_S ?= 129600
AIRFLOW_SECONDS ?= 30

.DEFAULT_GOAL := help
.PHONY: help install demo up down status simulate test test-unit test-integration lint bench clean

help: ## List every target
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv with pinned dependencies and fetch the JVM parts from Maven Central
	$(BIN)/reelpulse setup

demo: install ## Install, start the stack, backfill history + $(SECONDS)s of live traffic, build the lake, ask it, publish recommendations and A/B reports, run the DAGs in Airflow
	$(BIN)/reelpulse up
	$(BIN)/reelpulse simulate --no-pace --duration $(HISTORY_S) --rate 3 --users 2000 --seed 11 --world-seed 7 \
		--incident edge_outage:3600:14400 --truth artifacts/demo/history-truth.json
	$(BIN)/reelpulse simulate --duration $(SECONDS) --truth artifacts/demo/truth.json
	$(BIN)/reelpulse lake build
	$(BIN)/reelpulse sql --question top-titles-yesterday
	$(BIN)/reelpulse sql --question edges-by-rebuffer-ratio
	$(BIN)/reelpulse lake products
	$(BIN)/reelpulse recommend user-000001
	$(BIN)/reelpulse airflow up
	$(BIN)/reelpulse simulate --duration $(AIRFLOW_SECONDS) --seed 8 --world-seed 7 --truth artifacts/demo/airflow-truth.json
	$(BIN)/reelpulse airflow trigger --wait
	$(BIN)/reelpulse sql --question top-titles-yesterday
	$(BIN)/reelpulse status

up: install ## Start the local stack
	$(BIN)/reelpulse up

down: ## Stop the local stack and Airflow (data is kept)
	$(BIN)/reelpulse down

status: ## Services, topics and consumer-group lag
	$(BIN)/reelpulse status

simulate: install ## Simulate traffic continuously, paced in real time (Ctrl-C to stop)
	$(BIN)/reelpulse simulate --continuous

test: install ## Lint, type-check, then every test tier (unit; integration on a real broker and registry)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

test-unit: $(STAMP) ## Unit tests only (no services, seconds)
	$(BIN)/pytest -m unit

test-integration: install ## Integration tests only (starts its own broker and registry)
	$(BIN)/pytest -m integration

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: install ## Producer vs ProducerPerformance; collector vs producer; Faust vs bare loop; lake vs raw copy, DuckDB vs Spark; A/B reports vs pandas + scipy; recommenders vs popularity
	$(BIN)/python -m benchmarks.producer
	$(BIN)/python -m benchmarks.collector
	$(BIN)/python -m benchmarks.streams
	$(BIN)/python -m benchmarks.lake
	$(BIN)/python -m benchmarks.experiments
	$(BIN)/python -m benchmarks.recommendations

clean: down ## Stop the stack and delete its state (topics, schemas, logs)
	rm -rf .reelpulse/kafka .reelpulse/run .reelpulse/logs
