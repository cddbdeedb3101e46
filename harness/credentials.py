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

import os
import re
from collections.abc import MutableMapping
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"
# scheme://user:password@  (the password may be empty; it stops at '@', whitespace or a quote)
_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s'\"]*):[^@\s'\"]*@")
# ?password=... or &token=... in a URI's query (libpq and some stores take credentials there)
_QUERY_SECRET = re.compile(r"([?&](?:password|passwd|pwd|token|secret|access_token|sig|signature)=)[^&\s'\"]*", re.IGNORECASE)


# The URIs this process was given: their passwords are masked wherever they appear, whatever they hold.
KNOWN_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def redact(text: str) -> str:
    """``text`` with the password of every URI in it replaced by ``***``.

    A password holding a quote or a space (which a database URI may, unencoded: SQLAlchemy reads the
    password up to the first '@') cannot be told from the text around it by a pattern; the passwords
    of the URIs this process was given (``MLFLOW_TRACKING_URI``, ``MLFLOW_REGISTRY_URI``) are masked
    as they are written."""
    for userinfo in _known_userinfo():
        user = userinfo.partition(":")[0]
        text = text.replace(f"//{userinfo}@", f"//{user}:{MASK}@")
    return _QUERY_SECRET.sub(rf"\g<1>{MASK}", _USERINFO.sub(rf"\g<1>:{MASK}@", text))


def _known_userinfo() -> list[str]:
    """``user:password`` of each URI in :data:`KNOWN_URI_VARIABLES` that has a password, read as SQLAlchemy
    reads a database URL: the user up to ':', the password up to the first '@'."""
    found = []
    for variable in KNOWN_URI_VARIABLES:
        match = re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*://([^:/@]*:[^@]+)@", os.environ.get(variable, ""))
        if match:
            found.append(match.group(1))
    return found


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
