"""Whose run it is: which account made a run, and whether a command may use it.

On a tracking server with accounts (MLflow's basic-auth app; ``harness server start --auth``), any account
that may write to an experiment can log a run that looks like a good training (tags, metrics, hashes and
all), so its numbers and its checkpoint could be planted. The server of ``harness server start --auth``
stamps every run with the account that created it (tag ``harness.created_by``, :mod:`harness.server_auth`;
clients cannot write it). ``register``, ``compare``, ``eval`` of a run and the pipelines use runs made by
the account they run as; another account's runs only when ``--accept-runs-from`` names it (or ``*``: any
account, and runs without a stamp, e.g. on a plain MLflow server with basic auth).

A local store or a server without accounts has no one to tell apart (whoever can write the file, or reach
the server, can write anything): nothing is checked there, and every run is used as before.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import mlflow

from harness.errors import HarnessError
from harness.run_schema import CREATED_BY_TAG, USER_TAG
from harness.stores import check_server, on_server

ANY_ACCOUNT = "*"


@functools.lru_cache(maxsize=4)
def _account_on(uri: str, username: str | None) -> str | None:
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    check_server(uri)  # a server that does not answer: the same one line as every other command's
    try:
        response = http_request(
            get_default_host_creds(uri),
            "/api/2.0/mlflow/users/current",
            "GET",
            max_retries=0,
            timeout=10,
            raise_on_status=False,
        )
    except MlflowException as exc:
        raise HarnessError(f"could not ask {uri} which account this is: {exc.message.splitlines()[0]}") from None
    if response.status_code == 404:
        return None  # no basic-auth app: a server without accounts
    if response.status_code != 200:
        raise HarnessError(f"could not ask {uri} which account this is (HTTP {response.status_code})")
    return response.json().get("user", {}).get("username") or username


def current_account() -> str | None:
    """The account this process acts as on a tracking server with accounts; None on a local store or a
    server without accounts (nothing to tell apart there)."""
    if not on_server():
        return None
    return _account_on(mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_USERNAME"))


def made_by(run) -> str | None:
    """The account the server stamped on ``run`` (None: no stamp)."""
    return run.data.tags.get(CREATED_BY_TAG)


def makers(run) -> dict[str, str | None]:
    """Who made ``run``: the server's stamp, and the user the client claimed (``mlflow.user``)."""
    return {"created_by": made_by(run), "mlflow_user": run.data.tags.get(USER_TAG)}


@dataclass(frozen=True)
class AcceptedAccounts:
    """The accounts whose runs a command uses besides its own (``--accept-runs-from A,B`` or ``*``)."""

    names: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, given: str | Sequence[str] | None) -> AcceptedAccounts:
        parts = given.split(",") if isinstance(given, str) else list(given or ())
        names = frozenset(part.strip() for part in parts if part.strip())
        return cls(names)

    @property
    def any(self) -> bool:
        return ANY_ACCOUNT in self.names

    def refusal(self, run, account: str | None) -> str | None:
        """Why ``run`` may not be used by ``account`` (None: it may)."""
        if account is None or self.any:
            return None
        maker = made_by(run)
        if maker == account or (maker is not None and maker in self.names):
            return None
        label = f"run {run.info.run_id} ({run.info.run_name})"
        if maker is None:
            return (
                f"{label} has no server stamp of the account that made it ({CREATED_BY_TAG}: a server started by "
                f"`harness server start --auth` stamps every run); --accept-runs-from '{ANY_ACCOUNT}' uses it anyway"
            )
        return (
            f"{label} was made by account '{maker}', not by '{account}': its numbers and checkpoint could be "
            f"planted; --accept-runs-from {maker} uses it"
        )


OWN_RUNS_ONLY = AcceptedAccounts()


def check_usable(run, accepted: AcceptedAccounts) -> None:
    """Refuse, in one line, a run this command may not use (another account's, without ``--accept-runs-from``)."""
    why = accepted.refusal(run, current_account())
    if why is not None:
        raise HarnessError(why)


def usable_runs(runs: Iterable, accepted: AcceptedAccounts) -> tuple[list, dict[str, int]]:
    """The runs this command may use, in their order, and how many were left out per account that made them
    ('?' for runs without a stamp)."""
    account = current_account()
    kept, left_out = [], {}
    for run in runs:
        if accepted.refusal(run, account) is None:
            kept.append(run)
        else:
            maker = made_by(run) or "?"
            left_out[maker] = left_out.get(maker, 0) + 1
    return kept, left_out


def left_out_line(left_out: dict[str, int]) -> str:
    """One line saying which runs of other accounts were not used, and how to use them."""
    counts = ", ".join(
        f"{count} by {'no stamped account' if who == '?' else repr(who)}" for who, count in sorted(left_out.items())
    )
    names = ANY_ACCOUNT if "?" in left_out else ",".join(sorted(left_out))
    return f"left out runs made by other accounts ({counts}); --accept-runs-from {names} uses them"
