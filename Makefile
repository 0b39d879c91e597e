# The two commands a new user needs: `make demo` and `make test`. Both set up first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHECKOV := $(VENV)/tools/checkov
CHECKOV_STAMP := $(CHECKOV)/.installed
DATA ?= data

.PHONY: setup test lint demo bench bench-train bench-serve bench-app serve app data clean

setup: $(STAMP) $(CHECKOV_STAMP)

# Re-installs only when the dependency declarations change; constraints pin the whole tree.
# --no-compile: Python compiles what is imported when it is imported; compiling every module
# of torch & co at install costs a minute that most of them never repay.
$(STAMP): pyproject.toml requirements.lock
	@command -v $(PY) >/dev/null || { echo "need $(PY) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==25.3"
	$(BIN)/python -m pip install --quiet --no-compile -c requirements.lock -e ".[dev]"
	touch $(STAMP)

# checkov in an environment of its own (its pins conflict with the project's); the manifest
# tests run it from there.
$(CHECKOV_STAMP): requirements-checkov.lock
	test -x $(CHECKOV)/bin/python || $(PY) -m venv $(CHECKOV)
	$(CHECKOV)/bin/python -m pip install --quiet --no-compile --no-deps -r requirements-checkov.lock
	touch $(CHECKOV_STAMP)

# Test files run on TEST_WORKERS processes (pytest-xdist), each file whole on one worker so its
# module fixtures are built once. Most of the suite waits on subprocesses and servers (one core
# busy on average when serial): 2 workers on CI's 2 cores take pytest from 18-26 min to 13-17 min
# here. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
test: setup browser test-images
	$(BIN)/python -m pytest -q --durations=25 -n $(TEST_WORKERS) --dist loadfile

# The images the tests run as the cluster runs them (tests/containers.py): the app and ONNX serving
# images, built from the repository's Dockerfiles (tools/images_local.py: as root with apt-get it
# installs and starts Docker, and makes a Debian base where no registry serves one). Docker's
# layer cache makes a rebuild of unchanged sources take seconds. Where no daemon can run, the
# image tests skip, saying why, except under CI=true, where this fails.
TEST_IMAGES := app serving-onnx
.PHONY: test-images
test-images: setup
	@$(BIN)/python -m tools.images_local $(TEST_IMAGES) \
		|| { echo "the image tests will skip (fail under CI)"; \
			case "$$CI" in ""|0|false|False|FALSE) ;; *) exit 1;; esac; }

# tests/browser.py opens the validation report in a headless Chromium cut off from the network.
# CI runs as root on a fresh Debian: install Debian's chromium + chromedriver there (a no-op
# when present). Elsewhere nothing is installed and that test skips, unless CI is set.
.PHONY: browser
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends \
			chromium chromium-driver >/dev/null \
		|| { echo "could not install chromium: the browser test will skip (fail under CI)"; \
			case "$$CI" in ""|0|false|False|FALSE) ;; *) exit 1;; esac; }; \
	else echo "no chromium/chromedriver and not root with apt-get: the browser test will skip"; fi

lint: setup
	$(BIN)/ruff check model components sign2text pipelines tools tests app
	$(BIN)/ruff format --check model components sign2text pipelines tools tests app

# The bundled dataset: a deterministic synthetic stand-in for WLASL (docs/data.md).
data: setup
	test -f $(DATA)/WLASL_v0.3.json || $(BIN)/sign2text data synth --out $(DATA)

# The main job end to end on the bundled dataset: validate -> convert -> train -> evaluate -> package.
demo: setup data
	PATH="$(abspath $(BIN)):$$PATH" DVC_NO_ANALYTICS=1 $(BIN)/dvc repro
	$(BIN)/python -m tools.demo

# The demo recipe for seeds 0-4 with 1 and 2 threads, trained and evaluated (about an hour on 2
# cores); prints a table and fails unless every run passes the gate. A benchmark, not a test.
.PHONY: demo-matrix
demo-matrix: setup data
	$(BIN)/python -m tools.demo_matrix

# Preprocessing, sentence mode, the forward per runtime and precision (with accuracy and the
# FLOP rate), predict-batch videos/s, and served requests/s with and without batching.
bench: setup
	$(BIN)/python -m tools.bench.bench_model
	$(BIN)/python -m tools.bench.bench_runtime
	$(BIN)/python -m tools.bench.bench_serve --throughput

# Training: samples/s with 1 vs 2 processes (torchrun), and the streaming loader vs a training step.
bench-train: setup
	$(BIN)/python -m tools.bench.bench_train

bench-serve: setup
	$(BIN)/python -m tools.bench.bench_serve

# The web app over the model it fronts: upload-to-result ratio, live-mode latency.
bench-app: setup
	$(BIN)/python -m tools.bench.bench_app

# The web app on :8501 against `make serve`'s REST endpoint; feedback kept in artifacts/feedback
# (give FEEDBACK=s3://BUCKET/PREFIX for object storage).
FEEDBACK ?= artifacts/feedback
app: setup
	$(BIN)/sign2text app --model-url http://127.0.0.1:8080 --port 8501 --feedback $(FEEDBACK) \
		--spool artifacts/feedback-spool

# Serves the demo model (run `make demo` first) on :8080 (REST) and :8081 (gRPC).
serve: setup
	test -f artifacts/model/model.pt || { echo "no artifacts/model: run 'make demo' first"; exit 1; }
	$(BIN)/sign2text serve --model-dir artifacts/model --http-port 8080 --grpc-port 8081

clean:
	rm -rf artifacts .pytest_cache

# The trained model sentence-mode tests run (tests/fixtures/SOURCES.md): the demo's packaged
# model, weights and config only. Refresh it after a change that alters the demo model.
.PHONY: sentence-fixture
sentence-fixture: demo
	rm -rf tests/fixtures/sentence_model && mkdir -p tests/fixtures/sentence_model
	cp artifacts/model/config.json artifacts/model/labels.txt artifacts/model/model.pt \
		tests/fixtures/sentence_model/

# Versioned data on S3 / MinIO (remote `storage` in .dvc/config). Endpoint and keys come from
# AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (dvc-s3 honours all three from the
# environment) or from .dvc/config.local (`dvc remote modify --local storage ...`).
.PHONY: data-push data-pull s3-up
S3_PORT ?= 9000

data-push: setup
	PATH="$(abspath $(BIN)):$$PATH" DVC_NO_ANALYTICS=1 $(BIN)/dvc push

data-pull: setup
	PATH="$(abspath $(BIN)):$$PATH" DVC_NO_ANALYTICS=1 $(BIN)/dvc pull

# A throwaway local S3 (SeaweedFS) on 127.0.0.1:$(S3_PORT) with bucket sign2text; prints the
# variables to export. Runs in the foreground until Ctrl-C; its data is discarded on exit.
s3-up: setup
	S3_PORT=$(S3_PORT) $(BIN)/python -m tools.s3_server

# The heavy image tests (pytest -m heavy): every image built here, then the whole pipeline run in
# the components image (kfp's DockerRunner) and held to `dvc repro`'s model, and deploy's create
# path run in it against a fake Kubernetes API. The components image is 7 GB: not in `make test`.
.PHONY: test-images-full
test-images-full: setup browser
	$(BIN)/python -m tools.images_local $(IMAGES_LOCAL)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m heavy

# Every image built here from the repository, without a registry: serving (torch and ONNX),
# components and app, tagged sign2text-*:local (tools/images_local.py; docs/cluster.md, "Images").
.PHONY: images-local
IMAGES_LOCAL ?= app serving-onnx serving components
images-local: setup
	$(BIN)/python -m tools.images_local $(IMAGES_LOCAL)

# Build and push the images (serving, its CUDA and ONNX builds, components, app), then point the
# manifests and the compiled pipeline at them.
# Needs docker and a registry you are logged in to (not available in CI here).
.PHONY: images
REGISTRY ?=
TAG ?= $(shell git rev-parse --short HEAD)
# Stamped into the components image, where lineage.json reads it (no git in a pipeline pod).
GIT_COMMIT ?= $(shell git rev-parse HEAD)$(shell git status --porcelain | grep -q . && echo -dirty)

images: setup
	@test -n "$(REGISTRY)" || { echo "usage: make images REGISTRY=registry.example.com/team TAG=0.2.0"; exit 2; }
	docker build -f model/Dockerfile -t $(REGISTRY)/sign2text-serving:$(TAG) .
	docker build -f model/Dockerfile --build-arg TORCH_INDEX_URL=https://pypi.org/simple \
		-t $(REGISTRY)/sign2text-serving:$(TAG)-cuda .
	docker build -f model/Dockerfile --build-arg RUNTIME=onnx \
		-t $(REGISTRY)/sign2text-serving:$(TAG)-onnx .
	docker build -f pipelines/Dockerfile --build-arg GIT_COMMIT=$(GIT_COMMIT) \
		-t $(REGISTRY)/sign2text-components:$(TAG) .
	docker build -f app/Dockerfile -t $(REGISTRY)/sign2text-app:$(TAG) .
	docker push $(REGISTRY)/sign2text-serving:$(TAG)
	docker push $(REGISTRY)/sign2text-serving:$(TAG)-cuda
	docker push $(REGISTRY)/sign2text-serving:$(TAG)-onnx
	docker push $(REGISTRY)/sign2text-components:$(TAG)
	docker push $(REGISTRY)/sign2text-app:$(TAG)
	$(BIN)/sign2text images stamp --registry $(REGISTRY) --tag $(TAG)
	$(BIN)/sign2text pipeline compile --image $(REGISTRY)/sign2text-components:$(TAG) \
		--out pipelines/sign2text.yaml

# The model the InferenceServices start from (manifests/base storageUri
# s3://sign2text/models/initial/), published once per object store; needs AWS_ENDPOINT_URL and
# the keys (docs/cluster.md). MODEL_DIR: any packaged model directory.
.PHONY: initial-model
MODEL_DIR ?= artifacts/model
initial-model: setup
	$(BIN)/sign2text model publish $(MODEL_DIR)

# The Kubeflow pipeline spec (pipelines/sign2text.yaml, committed; a test fails when it is stale).
# IMAGE=REGISTRY/sign2text-components:TAG names the steps' image (default: the one the spec
# already names; the committed spec names a placeholder that `pipeline submit` refuses).
.PHONY: pipeline
IMAGE ?=
pipeline: setup
	$(BIN)/sign2text pipeline compile --out pipelines/sign2text.yaml $(if $(IMAGE),--image $(IMAGE))
