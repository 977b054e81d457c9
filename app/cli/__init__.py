"""The `gih` command (app.cli.main), one module per group of commands."""
