"""Secrets in URIs: kept out of everything the harness prints, logs or writes.

A tracking URI may carry a password (``http://alice:s3cret@host:5000``,
``postgresql://user:password@host/db``). On a shared tracking server whatever the harness records
is readable by everyone who uses it, so:

- :func:`move_to_environment` takes the user name and password out of an HTTP(S)
  ``MLFLOW_TRACKING_URI`` into ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, the
  variables MLflow's client authenticates with. MLflow's own messages (its "View run at" link), the
  harness's links and records, and the processes it starts (pipeline workers, ``reproduce``) then
  see the URI without them, and the server still gets them.
- :func:`redact` masks any password left in a text (a database URI, an error message), as
  SQLAlchemy renders database URLs (``user:***@``); every record and error line goes through it.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"
# scheme://user:password@  (the password may be empty; it stops at '@', whitespace or a quote)
_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s'\"]*):[^@\s'\"]*@")
# ?password=... or &token=... in a URI's query (libpq and some stores take credentials there)
_QUERY_SECRET = re.compile(r"([?&](?:password|passwd|pwd|token|secret|access_token|sig|signature)=)[^&\s'\"]*", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the password of every URI in it replaced by ``***``."""
    return _QUERY_SECRET.sub(rf"\g<1>{MASK}", _USERINFO.sub(rf"\g<1>:{MASK}@", text))


def without_userinfo(uri: str) -> str:
    """An HTTP(S) URI without ``user:password@``: what a link in a browser should be."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, parts.query, parts.fragment))


def move_to_environment(environ: MutableMapping[str, str]) -> bool:
    """Move the credentials of an HTTP(S) ``MLFLOW_TRACKING_URI`` into MLflow's credential variables.

    Returns whether there were any. Credentials already in the variables are kept unless the URI
    names others (the URI is the more specific of the two).
    """
    uri = environ.get("MLFLOW_TRACKING_URI", "")
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return False
    userinfo = parts.netloc.rpartition("@")[0]
    user, _, password = userinfo.partition(":")
    if user:
        environ["MLFLOW_TRACKING_USERNAME"] = unquote(user)
    if password:
        environ["MLFLOW_TRACKING_PASSWORD"] = unquote(password)
    environ["MLFLOW_TRACKING_URI"] = without_userinfo(uri)
    return True
