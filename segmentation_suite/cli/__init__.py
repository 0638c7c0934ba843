"""The `segmentation-suite` command line (also `python -m segmentation_suite`).

Without a command it opens the app. Commands: `create` and `join` (train together in a relay
room), `train` (on this machine only), `predict` (masks from a saved model), `export` (a
bioimage.io package), `demo` (a local relay and simulated colleagues) and `relay` (run the
relay server). Failures are told in
plain words on stderr with exit code 1; argparse's own errors exit with 2, and Ctrl-C with 130.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys

from ..network.protocol import DEFAULT_PORT
from ..training.settings import TRAINING_DEFAULTS
from .options import (
    CommandError,
    add_data_options,
    add_demo_options,
    add_export_options,
    add_predict_options,
    add_room_options,
    add_training_options,
    count,
    port_number,
    positive_int,
)

# Options of the command itself; any other leading option is the app's.
OWN_OPTIONS = ("-h", "--help", "-v", "--verbose")
APP_MISSING = "the app needs: pip install 'segmentation-suite[app]'"
RICH_MISSING = "the command line needs rich: pip install rich"
TRAINING_MISSING = "training needs PyTorch: pip install 'segmentation-suite[train]'"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segmentation-suite",
        description="Train segmentation models together. Without a command, opens the app "
        "(which takes --relay-url URL and --name NAME).",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log what the network layer does (stderr)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    create = commands.add_parser(
        "create", help="create a room on the relay, wait for colleagues, train together"
    )
    add_room_options(create)
    create.add_argument(
        "--wait-for",
        type=count,
        default=1,
        metavar="N",
        help="start once N other members joined (default %(default)s; Enter starts at once)",
    )
    create.add_argument(
        "--lan",
        type=port_number,
        nargs="?",
        const=DEFAULT_PORT,
        metavar="PORT",
        help=f"host a LAN session on this machine's PORT (default {DEFAULT_PORT}) instead of a "
        "relay room; colleagues join with: join --lan HOST:PORT",
    )
    create.add_argument(
        "--open",
        action="store_true",
        help="an open room: a 6-character code the original app can join too, but whoever "
        "runs the relay can read the models (default: a private room, end-to-end encrypted, "
        "code K7QX2M-4HRT)",
    )
    add_data_options(create, in_a_room=True)
    add_training_options(create)

    join = commands.add_parser("join", help="join a room by its code and train with the host")
    join.add_argument(
        "code",
        metavar="CODE",
        help="the room code the host shared, e.g. K7QX2M-4HRT (private) or K7QX2M (open); "
        "with --lan: the host's HOST:PORT",
    )
    join.add_argument(
        "--lan", action="store_true", help="join a LAN session at CODE = HOST:PORT (no relay)"
    )
    add_room_options(join)
    add_data_options(join, in_a_room=True)
    add_training_options(join)

    train = commands.add_parser("train", help="train on this machine only (no relay)")
    train.add_argument(
        "--epochs",
        type=positive_int,
        default=TRAINING_DEFAULTS.local_epochs,
        help="default %(default)s",
    )
    add_data_options(train, in_a_room=False)
    add_training_options(train)

    add_predict_options(
        commands.add_parser(
            "predict", help="masks for a folder of images (or synthetic ones) from a saved model"
        )
    )

    add_export_options(
        commands.add_parser("export", help="a saved model as a bioimage.io model package")
    )

    add_demo_options(
        commands.add_parser("demo", help="a local relay and simulated colleagues training together")
    )
    # Listed for --help only: main() hands `relay ...` to the binary before parsing.
    commands.add_parser("relay", help="run the relay server (options: relay --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["relay"]:
        # Everything after `relay` is the relay's (argparse would take `--version` for ours).
        return run_relay(argv[1:])
    if argv and argv[0].startswith("-") and argv[0] not in OWN_OPTIONS:
        return open_app(argv)  # the app's options (--relay-url, --name, Qt's)
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    if args.command is None:
        return open_app([])
    try:
        return _run_command(args)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:  # before anything needed cleaning up (loading, say)
        return 130


def _run_command(args: argparse.Namespace) -> int:
    try:
        from rich.console import Console
    except ImportError:  # `relay` and the app work without it
        raise CommandError(RICH_MISSING) from None
    if importlib.util.find_spec("torch") is None:  # found, not imported: errors stay quick
        raise CommandError(TRAINING_MISSING)
    console = Console(markup=False, highlight=False, soft_wrap=True)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args, console)
    if args.command == "train":
        from .local import run_train

        return run_train(args, console)
    if args.command == "predict":
        from .predict import run_predict

        return run_predict(args, console)
    if args.command == "export":
        from .export import run_export

        return run_export(args, console)
    from .session import run_create, run_join

    return run_create(args, console) if args.command == "create" else run_join(args, console)


def open_app(options: list[str]) -> int:
    try:
        import PySide6  # noqa: F401
        import qtpy  # noqa: F401
    except ImportError:
        print(APP_MISSING, file=sys.stderr)
        return 1
    from ..app import run

    return run(["segmentation-suite", *options])


def run_relay(options: list[str]) -> int:
    from ..relay_process import find_relay_binary

    try:
        binary = str(find_relay_binary())
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    os.execv(binary, [binary, *options])
    return 1  # not reached


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    if not verbose:
        # The client reports every failure through its `error` signal too, which the commands
        # print in plain words; its log records would say the same thing twice.
        logging.getLogger("segmentation_suite.network").setLevel(logging.CRITICAL)


__all__ = ["main", "build_parser"]
