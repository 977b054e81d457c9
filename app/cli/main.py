"""`gih`: the operator's management command: the groups, the global --json, the entry point."""

import os
import sys

import typer

from app.cli import credits, db, keys, serve, usage, users, webhooks
from app.cli.common import Failure, JsonOpt, state

app = typer.Typer(help="GPT Image Hub management command.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
app.add_typer(users.app, name="users")
app.add_typer(keys.app, name="keys")
app.add_typer(credits.app, name="credits")
app.add_typer(db.app, name="db")
app.add_typer(webhooks.app, name="webhooks")
app.command()(serve.serve)
app.command()(serve.worker)
app.command()(usage.usage)


@app.callback()
def _root(as_json: JsonOpt = False) -> None:
    state["json"] = as_json


def main() -> None:
    from app.ops import logs

    logs.configure("INFO", os.environ.get("GIH_LOG_FORMAT", "json"))
    try:
        app()
    except Failure as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.code)
