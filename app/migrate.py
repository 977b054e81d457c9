"""Run the Alembic migrations from code (`gih db upgrade`, and the embedded default at start)."""

import fcntl
from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations
from app.config import secure_sqlite_file, sqlite_path


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Safe to run from several processes at once: SQLite takes a file lock, PostgreSQL an
    advisory lock (in migrations/env.py)."""
    path = sqlite_path(database_url)
    if path is None:
        command.upgrade(alembic_config(database_url), revision)
        return
    secure_sqlite_file(path)
    with open(path.with_name(path.name + ".migrate.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        command.upgrade(alembic_config(database_url), revision)
