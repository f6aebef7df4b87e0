"""One migrated database per test session, copied into each test's state directory.

A fresh SQLite database takes every Alembic migration (about 1 s on these machines); a copy of
one migrated at the start of the session takes milliseconds, and the app's own `upgrade` at
startup is then the no-op check it is on a running host (about 40 ms). The migrations
themselves stay proven: they run here once per session, and tests/unit/test_migrations.py
runs them from empty, from older revisions and down again. The real daemon's tests
(tests/daemon.py) keep migrating from empty.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from pathlib import Path

from app.db.migrate import upgrade

DB_NAME = "kvmnetd.db"  # app.settings.Settings.db_url's file in the state directory

_lock = threading.Lock()
_template: Path | None = None


def _migrated() -> Path:
    global _template
    with _lock:
        if _template is None:
            directory = Path(tempfile.mkdtemp(prefix="kvt-dbtemplate-"))
            atexit.register(shutil.rmtree, directory, True)
            path = directory / DB_NAME
            upgrade(f"sqlite:///{path}")
            _template = path
        return _template


def seed_state_dir(state_dir: Path) -> Path:
    """`state_dir` (created, mode 0700 as the daemon makes it) holding a copy of the session's
    migrated, empty database. Returns `state_dir`."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copyfile(_migrated(), state_dir / DB_NAME)
    return state_dir


def seeded_database_file(path: Path) -> Path:
    """A copy of the session's migrated, empty database at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_migrated(), path)
    return path
