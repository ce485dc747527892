"""The service's own `tuner` subcommands (serve, db, token).

They live here, not in `tuner/cli`, because `tuner` never imports `api`; the `tuner` CLI
finds them through the `tuner.cli` entry-point group declared in pyproject.toml.
"""
