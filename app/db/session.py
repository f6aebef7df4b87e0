"""Engine and unit of work. SQLite runs in WAL mode with foreign keys enforced.

One unit of work per request (API) or per reconcile batch (supervisor): it commits when the
block ends normally and rolls back on any exception. Services never commit themselves.

Writers are serialized by a lock in this process before they reach SQLite. SQLite allows one
writer at a time anyway, and a writer that finds the database locked waits in SQLite's busy
handler, which sleeps in growing steps (up to 100 ms): under concurrent requests that, not
the work, set the latency. Read-only units (`reading()`) take no lock: WAL readers never block.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import SQLAlchemyError as DatabaseError
from sqlalchemy.orm import Session, sessionmaker

# Session: services and workers type with it; DatabaseError: what a unit of work raises when
# the database refuses a write (a constraint), which workers contain on the object concerned
__all__ = ["Database", "DatabaseError", "Session", "make_engine"]


def make_engine(url: str) -> Engine:
    is_sqlite = url.startswith("sqlite")
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30} if is_sqlite else {},
        pool_size=16 if is_sqlite else 5,
        max_overflow=32,
    )
    if is_sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode is durable against a process crash (kill -9); only power loss
    # can lose the last transactions.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class Database:
    """Owns the engine and hands out units of work."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._is_sqlite = url.startswith("sqlite")
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = threading.Lock()

    @contextmanager
    def unit_of_work(self) -> Iterator[Session]:
        """A read-write transaction: commits at the end, rolls back on an exception."""
        with self._write_lock:
            session = self._sessions()
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise
            finally:
                session.close()

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only unit: sees one consistent snapshot, never writes, never waits.

        pysqlite opens a transaction only before a write (Python's legacy transaction
        control, https://docs.python.org/3/library/sqlite3.html#transaction-control), so
        without one of our own every SELECT would see the database as it is at that
        moment: a row committed between two queries of one unit would be in one and not
        in the other. A deferred `BEGIN` makes them one read transaction; in WAL mode its
        snapshot is taken at the first read and never blocks a writer
        (https://www.sqlite.org/isolation.html). Closing the session rolls it back."""
        session = self._sessions()
        try:
            if self._is_sqlite:
                session.connection().exec_driver_sql("BEGIN")
            yield session
        finally:
            session.close()  # ends the read transaction; loaded rows stay usable

    def dispose(self) -> None:
        self.engine.dispose()
