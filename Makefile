# make setup: the venv with the pinned dependencies and the harness (editable); idempotent.
# make test:  setup + the test suite (what CI runs).
# make demo:  setup + the main job: FetchReach-v4, SAC without and with HER, seeds 0,1,2,
#             evaluation and the comparison table, on ./mlflow.db (about 10 minutes on 2 cores).
# make ui:    the MLflow UI on the same store.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_ENV ?= FetchReach-v4
DEMO_SEEDS ?= 0,1,2
DEMO_STEPS ?= 10000
DEMO_PRESET ?= fast
export MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db

.PHONY: setup test demo ui clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

test: setup
	@$(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite is missing" >&2; exit 1; fi; \
	exit $$rc

# The chapter's reach-all pipeline: trainings run side by side on all cores; re-running reuses finished runs.
demo: setup
	@start=$$(date +%s); \
	$(BIN)/harness reach-all --seeds $(DEMO_SEEDS) --preset $(DEMO_PRESET) --total-steps $(DEMO_STEPS) || exit 1; \
	echo "make demo took $$(( $$(date +%s) - start ))s"

ui: setup
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --port 5000

clean:
	rm -rf checkpoints results runs
