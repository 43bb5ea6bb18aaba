"""``lowbit`` command line: thin, every command is a call into the library.

Each command lives in its own module with ``add_parser(subparsers)``; the parser's
``run`` default is called with the parsed arguments.
"""

from __future__ import annotations

import argparse
import sys

from . import bench_cmd, debug_cmd, formats_cmd, qat_cmd, quantize_cmd, recommend_cmd

COMMANDS = [formats_cmd, quantize_cmd, debug_cmd, recommend_cmd, bench_cmd, qat_cmd]

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lowbit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"lowbit {args.command}: error: {e}", file=sys.stderr)
        return 2
