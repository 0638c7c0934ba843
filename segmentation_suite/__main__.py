"""The `segmentation-suite` command line (also `python -m segmentation_suite`)."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="segmentation-suite", description="Train segmentation models together."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    from . import demo

    demo.add_arguments(
        commands.add_parser("demo", help="a local relay and simulated colleagues training together")
    )
    relay = commands.add_parser("relay", help="run the relay server (options: relay --help)")
    relay.add_argument("relay_options", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo.run(args)
    from .relay_process import find_relay_binary

    binary = str(find_relay_binary())
    os.execv(binary, [binary, *args.relay_options])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
