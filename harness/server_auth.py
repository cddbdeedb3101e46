"""The tracking server's app for ``harness server start --auth``: MLflow's basic-auth app, and a stamp of who
made each run that no client can write.

MLflow's server takes a run's ``user_id`` and ``mlflow.user`` from the client, and any account that may write
to an experiment may set any tag of its runs (the sha256 tags included). So on a shared server the only
trustworthy answer to "which account made this run" is one the server writes itself: after a run is created,
this app tags it ``harness.created_by`` with the account that created it, and it refuses (403) every request
that would write or delete that tag (``runs/create``, ``runs/set-tag``, ``runs/delete-tag``, ``runs/log-batch``,
under ``/api/2.0`` and ``/ajax-api/2.0``). Commands that use runs they did not make read the stamp
(:mod:`harness.accounts`).

Loaded by ``mlflow server --app-name harness-auth`` (the ``mlflow.app`` entry point in pyproject.toml); it
runs inside the server, so it imports nothing of the harness but the tag's name.
"""

from __future__ import annotations

import logging

from flask import Response, jsonify, request

from harness.run_schema import CREATED_BY_TAG

_logger = logging.getLogger(__name__)

CREATE_RUN = "/mlflow/runs/create"
TAG_WRITES = (CREATE_RUN, "/mlflow/runs/set-tag", "/mlflow/runs/delete-tag", "/mlflow/runs/log-batch")


def _written_tag_keys(body: object) -> list[str]:
    """The tag keys a run-writing request's JSON body names (``key`` of set/delete-tag, ``tags`` of
    create/log-batch); anything unexpected counts as naming the stamp, so it is refused."""
    if not isinstance(body, dict):
        return [CREATED_BY_TAG]
    keys = [body["key"]] if "key" in body else []
    tags = body.get("tags", [])
    if not isinstance(tags, list):
        return [CREATED_BY_TAG]
    keys += [tag.get("key") if isinstance(tag, dict) else CREATED_BY_TAG for tag in tags]
    return [str(key).strip() for key in keys]


def refuse_stamp_writes() -> Response | None:
    """Before a request: one that writes or deletes the stamp is refused (403), whoever sends it."""
    if request.method != "POST" or not request.path.endswith(TAG_WRITES):
        return None
    body = request.get_json(force=True, silent=True)
    if body is None and request.get_data():
        return None  # not JSON: MLflow's own handler refuses it
    if CREATED_BY_TAG in _written_tag_keys(body or {}):
        response = jsonify(
            error_code="PERMISSION_DENIED",
            message=f"the tag {CREATED_BY_TAG} is written by this server (the account that created the run); "
            "no client may set or delete it",
        )
        response.status_code = 403
        return response
    return None


def stamp_new_run(response: Response) -> Response:
    """After a request: a run just created gets the account that created it, written by the server."""
    if request.method != "POST" or not request.path.endswith(CREATE_RUN) or response.status_code != 200:
        return response
    from mlflow.entities import RunTag
    from mlflow.server.auth import authenticate_request
    from mlflow.server.handlers import _get_tracking_store

    try:
        run_id = response.get_json()["run"]["info"]["run_id"]
        account = authenticate_request().username
        _get_tracking_store().set_tag(run_id, RunTag(CREATED_BY_TAG, account))
    except Exception as exc:  # an unstamped run is never taken for anyone's: say so and fail the request
        _logger.error("could not stamp a new run with %s: %s", CREATED_BY_TAG, exc)
        failed = jsonify(error_code="INTERNAL_ERROR", message=f"the run was created but not stamped ({exc})")
        failed.status_code = 500
        return failed
    return response


def create_app():
    """MLflow's basic-auth app with the stamp: ``mlflow server --app-name harness-auth``."""
    from mlflow.server import app
    from mlflow.server.auth import create_app as basic_auth_app

    app.before_request(refuse_stamp_writes)
    app.after_request(stamp_new_run)
    return basic_auth_app(app)
