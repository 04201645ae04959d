"""Where studies live: Optuna's storages, nothing home-made.

* a plain path (the default, ``fusedlr-tune.db``) is an embedded SQLite database: no server, and a
  study killed half way resumes from it;
* a path ending in ``.journal`` is Optuna's append-only journal file (``JournalFileBackend``);
* a URL (``sqlite:///...``, ``postgresql://user@host/db``, ``mysql://...``) is an Optuna RDB
  storage: point several processes or machines at one PostgreSQL database to tune in parallel
  (Optuna's distributed mode).

RDB storages get Optuna's heartbeat: a trial whose process died (killed, out of memory, machine
lost) stops beating, is marked failed by the next worker after ``grace_period`` seconds and is
queued again with the same parameters (``RetryFailedTrialCallback``), so a resumed study re-runs
exactly the interrupted trial. The journal file has no heartbeat in Optuna: an interrupted trial
stays ``RUNNING`` there and a fresh trial takes its place.
"""

from __future__ import annotations

import os
import sqlite3
import time
import warnings

import optuna

DEFAULT_STORAGE = "fusedlr-tune.db"


def storage_url(location: str | None) -> str:
    """The storage URL for a path or URL (a path becomes an absolute ``sqlite:///`` URL)."""
    location = location or DEFAULT_STORAGE
    if "://" in location or location.endswith(".journal"):
        return location
    return "sqlite:///" + os.path.abspath(location)


def _sqlite_engine(url: str) -> dict:
    """SQLite in write-ahead-log mode: readers never block the writer, and a commit costs no fsync of
    the whole database (``synchronous=NORMAL``), so a trial's records cost milliseconds, not seconds;
    a killed process still loses nothing committed. Waits up to a minute for another process's lock."""
    path = url[len("sqlite:///") :]

    def connect():
        connection = sqlite3.connect(path, timeout=60, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    return {"creator": connect}


def _retry_callback():
    """Optuna's callback that queues a dead worker's trial again (renamed in Optuna 4.9)."""
    retry = (
        getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    )
    return retry(max_retry=2)


def open_storage(location: str | None = None, *, heartbeat_interval: int | None = 30, grace_period: int | None = None):
    """An Optuna storage for ``location`` (see the module docstring)."""
    url = storage_url(location)
    if url.endswith(".journal") and "://" not in url:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(os.path.abspath(url)))
    engine_kwargs = _sqlite_engine(url) if url.startswith("sqlite:///") else None
    options = dict(engine_kwargs=engine_kwargs)
    if heartbeat_interval is not None:
        options.update(heartbeat_interval=heartbeat_interval, grace_period=grace_period or 2 * heartbeat_interval,
                       heartbeat_stale_trial_callback=_retry_callback())  # fmt: skip
    return _create_rdb_storage(url, options)


def _create_rdb_storage(url: str, options: dict, attempts: int = 6):
    """``RDBStorage(url, **options)``. Processes started together on a fresh database race to create
    Optuna's tables: the losers fail on the version stamp and succeed once the tables exist."""
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # the heartbeat is flagged experimental; it is Optuna's documented way
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, **options)
        except sqlalchemy.exc.DBAPIError:  # IntegrityError, OperationalError, ProgrammingError (PostgreSQL)
            if attempt == attempts - 1:
                raise
            time.sleep(0.25 * (attempt + 1))
