# make setup: the venv with the pinned dependencies and the harness (editable); idempotent.
# make test:  setup + the test suite, on every core (what CI runs; TEST_WORKERS=1 runs it in one process).
# make demo:  setup + the main job: FetchReach-v4, SAC without and with HER, seeds 0,1,2,
#             evaluation and the comparison table, on ./mlflow.db (about 10 minutes on 2 cores).
# make ui:    the MLflow UI on the same store.
# make mlproject: rewrite MLproject from TrainConfig's fields (tests fail when it is stale).
# make server: a tracking server on PostgreSQL in .mlflow-server/ (make server-stop stops it).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# make test runs the suite on every core (pytest-xdist; tests/conftest.py says which tests share a worker).
TEST_WORKERS ?= auto
DEMO_ENV ?= FetchReach-v4
DEMO_SEEDS ?= 0,1,2
DEMO_STEPS ?= 10000
DEMO_PRESET ?= fast
export MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db

.PHONY: mlproject setup browser postgres test test-quick lint demo bench ui server server-stop clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

# Debian's chromium for the headless-browser check of the MLflow UI (tests marked `browser`);
# installed only where apt-get can run as root, otherwise that test says it is skipped and why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not installed (needs root and apt-get): the browser test will be skipped"; fi; }

# Debian's PostgreSQL for `harness server` and the multi-node stack test; installed the same way.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	  else echo "PostgreSQL not installed (needs root and apt-get): the stack test will be skipped"; fi; }

# ruff with SB3-like settings (pyproject.toml): lint, and the formatting `ruff format` would give.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# MLproject's train and pipeline parameters, from harness/config.py's TrainConfig fields.
mlproject: setup
	$(BIN)/python -m entry_points.mlproject

test: setup browser postgres
	@$(BIN)/python -m pytest -q -n $(TEST_WORKERS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite is missing" >&2; exit 1; fi; \
	exit $$rc

# The edit loop: everything but the tests marked slow (trainings, servers, end-to-end CLI runs).
test-quick: setup
	$(BIN)/python -m pytest -q -m "not slow"

# The chapter's reach-all pipeline: trainings run side by side on all cores; re-running reuses finished runs.
demo: setup
	@start=$$(date +%s); \
	$(BIN)/harness reach-all --seeds $(DEMO_SEEDS) --preset $(DEMO_PRESET) --total-steps $(DEMO_STEPS) || exit 1; \
	echo "make demo took $$(( $$(date +%s) - start ))s"

# Benchmarks print their figures (see BENCHMARKS.md); a few minutes each on 2 cores.
bench: setup
	$(BIN)/python bench/recipes.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/tracking_overhead.py

ui: setup
	$(BIN)/harness ui --port 5000

# A tracking server on PostgreSQL in .mlflow-server/ for workers on several machines (docs/pipelines.md).
server: setup postgres
	$(BIN)/harness server start --dir .mlflow-server --port 5000

server-stop: setup
	$(BIN)/harness server stop --dir .mlflow-server

clean:
	rm -rf checkpoints results runs
