"""The MLflow UI view that answers the chapter's question: did HER learn where no-HER did not?

MLflow's UI opens in its GenAI workspace and shows runs ungrouped. It also supports saved views:
an experiment tag ``mlflow.sharedViewState.<id>`` holding the runs page's state (filter, columns,
grouping, charts), loaded by the URL parameter ``viewStateShareKey=<id>``, and listed in the page's
view picker. Every experiment the harness trains in gets one, **HER vs no-HER**: training runs only,
grouped by condition (HER / no-HER), with columns for the seed, algo, env, env steps and the final
``eval/success_rate``; in chart mode, ``eval/success_rate`` against env steps, one line per condition.
:func:`url` is the link the harness prints (``workflowType=machine_learning`` opens the Model-training
workspace). Nothing of the UI is forked; a user who edits the view and saves it keeps their version.
"""

from __future__ import annotations

import json
import time

from harness.credentials import without_userinfo
from harness.run_schema import ALGO_TAG, CONDITION_TAG, ENV_TAG, KIND_TAG, SEED_TAG, SHARED_VIEW_TAG_PREFIX

VIEW_ID = "her-vs-no-her"
VIEW_NAME = "HER vs no-HER"
VIEW_TAG = f"{SHARED_VIEW_TAG_PREFIX}{VIEW_ID}"
DEFAULT_UI = "http://127.0.0.1:5000"  # where `harness ui` / `make ui` serve a local store
SUCCESS = "eval/success_rate"


def column(kind: str, key: str) -> str:
    """The runs table's column key, as the UI writes it (``tags.`harness.seed```)."""
    return f"{kind}.`{key}`"


def view_state() -> dict:
    """The runs page's state: the search facets and the UI settings the view fixes."""
    return {
        "searchFilter": f"{column('tags', KIND_TAG)} = 'train'",
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "selectedColumns": [
            column("metrics", SUCCESS),
            column("tags", CONDITION_TAG),
            column("tags", SEED_TAG),
            column("tags", ALGO_TAG),
            column("tags", ENV_TAG),
            column("params", "total_steps"),
        ],
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": CONDITION_TAG}]},
        "groupsExpanded": {},
        "chartsSearchFilter": SUCCESS,  # the chart view shows the success curve only
        "runsHiddenMode": "SHOW_ALL",  # every seed in the curves, not the UI's first ten runs
        "useGroupedValuesInCharts": True,  # one line per condition: the mean over its seeds
    }


def publish(experiment_id: str) -> bool:
    """Save the view on the experiment unless it has one already (a user's edited version stays).
    True when it was written now."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    if VIEW_TAG in client.get_experiment(experiment_id).tags:
        return False
    now = int(time.time() * 1000)
    envelope = {"name": VIEW_NAME, "createdAt": now, "updatedAt": now, "state": json.dumps(view_state())}
    client.set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(envelope))
    return True


def ui_base(tracking_uri: str) -> str:
    """The UI's address: the tracking server itself, or where `harness ui` serves a local store."""
    if tracking_uri.startswith(("http://", "https://")):
        return without_userinfo(tracking_uri).rstrip("/")  # a link never carries a password
    return DEFAULT_UI


def url(base: str, experiment_id: str, chart: bool = True, run_id: str | None = None) -> str:
    """The link to the view (``chart``: the success curves, else the grouped table), or to one run's
    page in the Model-training workspace."""
    experiment = f"{base}/#/experiments/{experiment_id}"
    if run_id is not None:
        return f"{experiment}/runs/{run_id}?workflowType=machine_learning"
    mode = "&compareRunsMode=CHART" if chart else ""
    return f"{experiment}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_ID}{mode}"
