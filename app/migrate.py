"""Run the Alembic migrations from code (`gih db upgrade`, and the embedded default at start)."""

from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations
from app.config import sqlite_path


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    path = sqlite_path(database_url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(database_url), revision)
