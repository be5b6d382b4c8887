"""What every tool command (``data``, ``zoo``, ``bench``, ``sweep``) shares: its help text, and running
the sub-command its first argument names. A module of its own so that the tool commands, wherever they
live (``vlp.datamodules.convert`` included), need nothing of :mod:`vlp.cli`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence

from vlp.errors import UserError

HELP_FLAGS = ("-h", "--help")


def print_help(text: str, asked: bool) -> None:
    """Help asked for (``--help``): on stdout, exit 0. Help instead of a missing command: stderr, exit 2."""
    print(text, file=sys.stdout if asked else sys.stderr)
    raise SystemExit(0 if asked else 2)


def tool_help(usage: str, about: str, title: str, summaries: Mapping[str, str], more: str) -> str:
    """A tool command's help (``zoo``, ``bench``): its usage, what it is, its sub-commands one a line
    under ``title``, and ``more`` (how to get a sub-command's own help)."""
    width = max(map(len, summaries)) + 1
    listed = [f"  {name:<{width}s} {summary}" for name, summary in summaries.items()]
    return "\n".join([f"usage: {usage}", "", about, "", f"{title}:", *listed, "", more])


def run_tool(
    args: Sequence[str], help_text: str, noun: str, runners: Mapping[str, Callable[[list[str]], object]]
) -> None:
    """Run a tool command's sub-command ``args[0]`` with the rest of ``args``; ``help_text`` for none or
    ``--help``. ``noun`` names a sub-command when ``args[0]`` is none of ``runners``."""
    if not args or args[0] in HELP_FLAGS:
        print_help(help_text, asked=bool(args))
    if args[0] not in runners:
        raise UserError(f"unknown {noun} {args[0]!r}; the {noun}s are {', '.join(runners)}")
    runners[args[0]](list(args[1:]))
