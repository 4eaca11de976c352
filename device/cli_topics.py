"""Subcommands for this capability (placeholder until its issue lands)."""

from earmark.cli import Cli


def register(cli: Cli) -> None:
    return None
