# Two set-up commands: `make demo` and `make test`. Everything installs into .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/.subscription_export/dagster_home
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

.PHONY: install demo test lint format ui bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/subscription-export demo

# The browser tests drive Debian's chromium (/usr/bin/chromium); playwright never downloads one.
test: $(STAMP)
	bash scripts/ensure-chromium.sh
	$(BIN)/pytest -q -n 2 --dist loadgroup

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

ui: $(STAMP)
	mkdir -p $(DAGSTER_HOME)
	test -f $(DAGSTER_HOME)/dagster.yaml || cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml

clean:
	rm -rf .subscription_export exports .pytest_cache

# Long benchmarks, never part of `make test`. Results land in bench/results/*.json.
BENCH_CHANGES ?= 1000000
bench: $(STAMP)
	$(BIN)/subscription-export bench --changes $(BENCH_CHANGES) --source postgresql
	$(BIN)/subscription-export bench --changes $(BENCH_CHANGES) --source sqlite --skip-pandas
	$(BIN)/python bench/delivery_bench.py || test $$? -eq 3  # 3: a missed target, the summary says so; a crash stops make
	$(BIN)/python bench/reconcile_bench.py
	$(BIN)/python bench/snapshot_bench.py --rows $(BENCH_CHANGES)
	$(BIN)/python bench/snapshot_load_bench.py --rows 200000
	$(BIN)/python bench/snapshot_load_bench.py --rows 200000
	$(BIN)/python bench/objstore_bench.py
	$(BIN)/python bench/workers_bench.py
	$(BIN)/python bench/capture_bench.py
	$(BIN)/python bench/summary.py
