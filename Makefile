# The two commands a new user needs: `make demo` and `make test`. Both set up first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= data

.PHONY: setup test lint demo bench bench-serve serve data clean

setup: $(STAMP)

# Re-installs only when the dependency declarations change; constraints pin the whole tree.
$(STAMP): pyproject.toml requirements.lock
	@command -v $(PY) >/dev/null || { echo "need $(PY) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==25.3"
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check model components pipelines tests
	$(BIN)/ruff format --check model components pipelines tests

# The bundled dataset: a deterministic synthetic stand-in for WLASL (see README).
data: setup
	test -f $(DATA)/WLASL_v0.3.json || $(BIN)/sign2text data synth --out $(DATA)

# The main job end to end on the bundled dataset: convert -> train -> evaluate -> package.
demo: setup data
	PATH="$(abspath $(BIN)):$$PATH" DVC_NO_ANALYTICS=1 $(BIN)/dvc repro
	$(BIN)/python -m components.demo

bench: setup
	$(BIN)/python -m tests.bench.bench_model

bench-serve: setup
	$(BIN)/python -m tests.bench.bench_serve

# Serves the demo model (run `make demo` first) on :8080 (REST) and :8081 (gRPC).
serve: setup
	test -f artifacts/model/model.pt || { echo "no artifacts/model: run 'make demo' first"; exit 1; }
	$(BIN)/sign2text serve --model-dir artifacts/model --http-port 8080 --grpc-port 8081

clean:
	rm -rf artifacts .pytest_cache
