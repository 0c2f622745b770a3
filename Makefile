# Subterra: `make demo` and `make test` set up everything they need on a fresh machine.
PY      := .venv/bin/python
VENV_OK := .venv/.installed

.PHONY: demo test test-all install bench bench-e2e clean

$(VENV_OK): pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(VENV_OK)

install: $(VENV_OK)

demo: $(VENV_OK)
	$(PY) -m subterra.cli compile data/workflows/travel_booking.yaml
	$(PY) -m subterra.cli report travel_booking

test: $(VENV_OK)
	$(PY) -m pytest -q

test-all: $(VENV_OK)
	$(PY) -m pytest -q -m ''

# quick benchmarks (paths, corpus, training, eval), one after another; a few minutes each
bench: $(VENV_OK)
	$(PY) -m bench.run

# end to end: full travel_booking compile, incremental recompile after a one-node edit, full recompile (long)
bench-e2e: $(VENV_OK)
	$(PY) -m bench.bench_e2e

clean:
	rm -rf data/subterra.duckdb* data/models data/runs .dagster_home
