"""`gih db`: the database schema (Alembic migrations)."""

import typer

from app.cli.common import settings

app = typer.Typer(help="Database schema.", no_args_is_help=True)


@app.command("upgrade")
def upgrade() -> None:
    """Create or upgrade the schema to the latest migration."""
    from app.migrate import upgrade as run_migrations

    run_migrations(settings().database_url)
    typer.echo("database schema is up to date")
