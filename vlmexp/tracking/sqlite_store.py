"""A local SQLite tracking store that a kill cannot leave half-made.

MLflow creates a new store's tables one statement at a time; a process killed meanwhile leaves a
file that every later run fails to open (``table ... already exists``). vlmexp creates a new store
under a temporary name and links it into place once whole, and turns a store that cannot be opened
into one line naming the file.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

from vlmexp.atomic import fsync_dir
from vlmexp.errors import TrackingError


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI; None for other stores and in-memory databases."""
    if urlparse(tracking_uri).scheme != "sqlite":
        return None
    path = unquote(tracking_uri[len("sqlite:///"):])
    return Path(path) if path and path != ":memory:" else None


def prepare_sqlite_store(tracking_uri: str) -> None:
    """Create the store whole when it does not exist yet (or is an empty file); check that an
    existing one opens, else one line naming the file."""
    path = sqlite_path(tracking_uri)
    if path is None:
        return
    tables = _tables(path) if path.exists() else set()
    if not tables:
        _create(path, replace=path.exists())
        return
    if not {"alembic_version", "experiments", "runs"} <= tables:
        raise TrackingError(f"{path}: an MLflow store left half-created ({len(tables)} tables, no runs table "
                            "or schema version); delete it or move it aside, then rerun")
    try:
        import mlflow

        mlflow.MlflowClient(tracking_uri=tracking_uri).search_experiments(max_results=1)
    except Exception as exc:  # a migration cut short, a newer schema, a locked or damaged file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise TrackingError(f"{path}: the MLflow store does not open ({first}); move it aside, or point "
                            "MLFLOW_TRACKING_URI / logger.tracking_uri at another store") from None


def _tables(path: Path) -> set[str]:
    # Read-write: a writer killed mid-transaction leaves a hot journal, which only a connection that
    # may write can roll back (a read-only one fails with "attempt to write a readonly database").
    try:
        with contextlib.closing(sqlite3.connect(str(path), timeout=30)) as db:
            return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise TrackingError(f"{path}: not a usable MLflow store ({exc}); move it aside, or point "
                            "MLFLOW_TRACKING_URI / logger.tracking_uri at another store") from None


def _create(path: Path, replace: bool) -> None:
    """Make the tables in a temporary file beside ``path``, sync it, then put it in place: with a
    hard link, which fails if another run made the store first (theirs is kept), or, over an empty
    file, with a rename."""
    import mlflow

    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of its own each time: MLflow caches stores by URI, and would take a reused name as made
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.creating")
    try:
        tmp_uri = f"sqlite:///{tmp}"
        mlflow.MlflowClient(tracking_uri=tmp_uri).search_experiments(max_results=1)
        _dispose_engine(tmp_uri)
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _dispose_engine(tracking_uri: str) -> None:
    """Close MLflow's cached connections to the temporary file before it is renamed."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    engine = getattr(SqlAlchemyStore, "_engine_map", {}).pop(tracking_uri, None)
    if engine is not None:
        engine.dispose()
