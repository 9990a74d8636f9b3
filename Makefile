# Every target bootstraps .venv itself, so a bare machine needs only python3.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/firered-batch run jobs/demo.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff format --check batch tests benchmarks
	$(BIN)/ruff check batch tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

# Every benchmark prints its table; BENCH_JSON=dir also writes each one's figures as JSON.
BENCHMARKS := sim_rate throughput makespan cold_start strict_concurrency defaults live_fal kills lost_answers storm big_manifest resume plan_folder webhook_vs_poll imaging
bench: $(STAMP)
	@for b in $(BENCHMARKS); do \
	  [ -f benchmarks/$$b.py ] || continue; \
	  echo "== $$b"; \
	  $(BIN)/python benchmarks/$$b.py $${BENCH_JSON:+--json $$BENCH_JSON/$$b.json} || exit 1; \
	done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
