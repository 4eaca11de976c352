"""The `earmark` command.

Each capability registers its own subcommands from a small module (``register(cli)``), so
this file stays a dispatcher. Groups shared by several capabilities (``bench``, ``eval``,
``models``) are created here and filled by the modules.

A handler takes the parsed ``argparse.Namespace`` and returns an exit code. Bad input is
raised as :class:`earmark.errors.EarmarkError` and printed on one line, without traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from earmark import __version__
from earmark.errors import EarmarkError

Handler = Callable[[argparse.Namespace], int]

# Modules that register subcommands, in the order they appear in --help.
COMMAND_MODULES = (
    "earmark.device.cli_voice",  # transcribe, devices, models fetch, bench stt
    "earmark.device.cli_topics",  # classify, eval topics, bench topics
    "earmark.device.cli_privacy",  # consent, region, ledger, bench gate
    "earmark.device.cli_device",  # device
    "earmark.gateway.cli",  # gateway, bench gateway
    "earmark.firmware_sim.cli",  # sim, demo, bench device
)

GROUPS = {
    "bench": "measure speed and memory against a baseline in the same run",
    "eval": "evaluate model quality on held-out data",
    "models": "manage speech and topic models",
}


class Cli:
    """What a command module sees: add a command, or add one under a group."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self._sub = parser.add_subparsers(dest="command", metavar="COMMAND")
        self._groups: dict[str, Any] = {}

    def command(
        self, name: str, handler: Handler, help: str, group: str | None = None
    ) -> argparse.ArgumentParser:
        sub: Any = self._sub
        if group is not None:
            sub = self._groups.get(group)
            if sub is None:
                gp = self._sub.add_parser(group, help=GROUPS[group])
                sub = gp.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
                sub.required = True
                self._groups[group] = sub
        parser: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help)
        parser.set_defaults(handler=handler)
        return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="earmark",
        description="On-device voice signal extractor: audio in, consented coarse tags out.",
    )
    parser.add_argument("--version", action="version", version=f"earmark {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)"
    )
    cli = Cli(parser)
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(cli)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except EarmarkError as err:
        print(f"earmark: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("earmark: interrupted", file=sys.stderr)
        return 130
