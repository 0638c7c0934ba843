"""The command line's options: value checks (argparse types), option groups commands share."""

from __future__ import annotations

import argparse
import getpass

from ..training.settings import DEMO_SETTINGS


class CommandError(Exception):
    """A failure to tell the user in plain words (stderr, exit code 1)."""


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def port_number(text: str) -> int:
    value = _int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port, 1 to 65535, got {text!r}")
    return value


def count(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 up to (not) 1, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def default_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (some containers)
        return "member"


def add_data_options(parser: argparse.ArgumentParser, *, default_member: int) -> None:
    source = parser.add_argument_group("data (one of)").add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data",
        metavar="FOLDER",
        help="a folder of images and masks: NAME.png + NAME_mask.png (or .tif), "
        "or images/ and masks/ subfolders with equal file names",
    )
    source.add_argument(
        "--synthetic",
        action="store_true",
        help="simulated microscopy images instead of a folder",
    )
    synthetic = parser.add_argument_group("synthetic data")
    synthetic.add_argument(
        "--member",
        type=count,
        default=default_member,
        help="which simulated microscope (0, 1, 2, ...; default %(default)s): give each "
        "member its own to see sharing help",
    )
    synthetic.add_argument(
        "--samples", type=positive_int, default=32, help="images (default %(default)s)"
    )
    parser.add_argument(
        "--validation",
        type=fraction,
        default=0.2,
        metavar="FRACTION",
        help="with --data: part of the folder kept aside to measure Dice (default %(default)s)",
    )


def add_training_options(parser: argparse.ArgumentParser) -> None:
    training = parser.add_argument_group("training")
    training.add_argument("--batch-size", type=positive_int, default=8, help="default %(default)s")
    training.add_argument(
        "--learning-rate", type=positive_float, default=1e-2, help="default %(default)s"
    )
    training.add_argument(
        "--seed", type=int, default=0, help="model initialisation and shuffling (default 0)"
    )
    training.add_argument(
        "--save", metavar="FILE", help="save the final model's weights here (torch.save)"
    )


def add_room_options(parser: argparse.ArgumentParser) -> None:
    room = parser.add_argument_group("room")
    room.add_argument(
        "--name",
        default=default_name(),
        help="your name as the others see it (default: your login name, %(default)s)",
    )
    room.add_argument(
        "--relay-url",
        metavar="URL",
        help="ws:// or wss:// address of the relay (default: SEGMENTATION_SUITE_RELAY_URL, "
        "then the user's relay_config.txt)",
    )
    room.add_argument(
        "--rounds", type=positive_int, default=5, help="rounds of sharing (default %(default)s)"
    )
    room.add_argument(
        "--epochs-per-round",
        type=positive_int,
        default=1,
        metavar="N",
        help="local epochs before each exchange (default %(default)s)",
    )
    room.add_argument(
        "--round-timeout",
        type=positive_float,
        default=300.0,
        metavar="SECONDS",
        help="how long to wait for a round's global model (default %(default)s)",
    )
    room.add_argument(
        "--accept-legacy-weights",
        action="store_true",
        help="read weights from colleagues on the original app (a pickle format; read only "
        "with PyTorch's restricted loader). Off: their weights are refused, with a message",
    )


def add_demo_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--colleagues",
        type=int,
        default=3,
        choices=range(2, 5),
        metavar="2..4",
        help="simulated colleagues (default %(default)s)",
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=DEMO_SETTINGS.rounds,
        help="rounds of sharing (default %(default)s)",
    )
    parser.add_argument(
        "--epochs",
        type=positive_int,
        default=DEMO_SETTINGS.epochs_per_round,
        help="local epochs per round (default %(default)s)",
    )
    parser.add_argument(
        "--images",
        type=positive_int,
        default=DEMO_SETTINGS.images_per_member,
        help="images per colleague (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the same seed prints the same table")
    parser.add_argument(
        "--timeout", type=positive_float, default=300, help="give up after this many seconds"
    )
    parser.add_argument("--quiet", action="store_true", help="print only the final table")
