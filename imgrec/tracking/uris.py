"""Which ``--tracking`` URIs imgrec accepts, checked before Ray starts (``imgrec.preflight``):
an MLflow server (``http(s)://host[:port][/path]``), a local folder (an ``mlruns``
folder, plain or ``file://``) or a SQLite file (``sqlite:///path.db``), and MLflow
installed (the ``imgrec[tracking]`` extra). Nothing here imports MLflow."""

from __future__ import annotations

import importlib.util
import os
from urllib.parse import urlsplit

from imgrec.config import ConfigError

FORMS = "an MLflow server (http://host:5000), a local folder (./mlruns) or sqlite:///path/mlflow.db"


def check_tracking(uri: str | None) -> None:
    """Refuse a URI MLflow cannot track to, one with credentials in it, or a missing MLflow."""
    if uri is None:
        return
    parts = urlsplit(uri.strip())
    scheme = parts.scheme.lower()
    if not uri.strip():
        raise ConfigError(f"tracking is empty: give {FORMS}, or leave it unset", "tracking")
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise ConfigError(f"tracking {uri!r} names no host; give e.g. http://127.0.0.1:5000", "tracking")
        if parts.username or parts.password:
            raise ConfigError("tracking URI holds credentials, which would be written into every checkpoint "
                              "manifest; set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or "
                              "MLFLOW_TRACKING_TOKEN) instead", "tracking")
    elif scheme == "sqlite":
        missing = [m for m in ("sqlalchemy", "alembic") if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(f"tracking {uri!r}: MLflow's SQLite store needs {' and '.join(missing)}; "
                              f"pip install {' '.join(missing)}, or track to a local folder", "tracking")
    elif scheme in ("", "file"):
        path = local_path(uri)
        if os.path.isfile(path):
            raise ConfigError(f"tracking {uri!r} is a file; give a folder (MLflow keeps runs in it, e.g. ./mlruns) "
                              "or a server", "tracking")
    else:
        raise ConfigError(f"tracking {uri!r} is not a place MLflow tracks to; give {FORMS} (a server can keep its "
                          "artifacts in S3)", "tracking")
    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError("tracking needs MLflow, which is not installed: pip install 'imgrec[tracking]' "
                          "(or leave --tracking unset)", "tracking")


def local_path(uri: str) -> str:
    """The absolute folder of a local tracking URI (plain path or ``file://``)."""
    path = urlsplit(uri).path if uri.startswith("file://") else uri
    return os.path.abspath(os.path.expanduser(path))


def client_uri(uri: str) -> str:
    """The URI handed to MLflow: a local folder made absolute (Tune and Ray change
    the working folder of the processes they start), anything else as given."""
    scheme = urlsplit(uri).scheme.lower()
    return local_path(uri) if scheme in ("", "file") else uri.strip()


def is_local_folder(uri: str) -> bool:
    return urlsplit(uri).scheme.lower() in ("", "file")
