"""The command line's options: value checks (argparse types), option groups commands share."""

from __future__ import annotations

import argparse
import getpass

from ..training.settings import (
    DEMO_SETTINGS,
    MICROSCOPE_COUNT,
    PREDICTION_OVERLAP,
    PREDICTION_TILE,
    TRAINING_DEFAULTS,
)


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


def microscope_number(text: str) -> int:
    value = _int(text)
    if not 1 <= value <= MICROSCOPE_COUNT:
        raise argparse.ArgumentTypeError(
            f"expected a microscope number from 1 to {MICROSCOPE_COUNT}, got {text!r}"
        )
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


def add_data_options(parser: argparse.ArgumentParser, *, in_a_room: bool) -> None:
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
        type=microscope_number,
        default=None if in_a_room else 1,
        metavar="N",
        help=f"which simulated microscope, 1 to {MICROSCOPE_COUNT} (default: "
        + (
            "from your place in the room: the host 1, the first to join 2, ...; each member "
            "gets its own, as labs have different microscopes)"
            if in_a_room
            else "1)"
        ),
    )
    synthetic.add_argument(
        "--samples",
        type=positive_int,
        default=TRAINING_DEFAULTS.images_per_member,
        help="images (default %(default)s)",
    )
    parser.add_argument(
        "--strict-data",
        action="store_true",
        help="with --data: refuse a folder with an unreadable or unusable file (default: "
        "leave such files out, each named in a warning)",
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
    training.add_argument(
        "--batch-size",
        type=positive_int,
        default=TRAINING_DEFAULTS.batch_size,
        help="default %(default)s",
    )
    training.add_argument(
        "--learning-rate",
        type=positive_float,
        default=TRAINING_DEFAULTS.learning_rate,
        help="default %(default)s",
    )
    training.add_argument(
        "--seed", type=int, default=0, help="model initialisation and shuffling (default 0)"
    )
    model = parser.add_argument_group("model files")
    model.add_argument(
        "--save",
        metavar="FILE",
        help="save the final model here (.safetensors, with its architecture and training plan)",
    )
    model.add_argument(
        "--init", metavar="FILE", help="start from a saved model (.safetensors) instead of anew"
    )
    model.add_argument(
        "--checkpoints",
        metavar="DIR",
        help="keep each round's model in a new session folder under DIR (default: the user's "
        "data folder, e.g. ~/.local/share/segmentation-suite/sessions)",
    )
    model.add_argument(
        "--no-checkpoints", action="store_true", help="keep no checkpoint of the rounds"
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
        "--rounds",
        type=positive_int,
        default=TRAINING_DEFAULTS.rounds,
        help="rounds of sharing (default %(default)s)",
    )
    room.add_argument(
        "--epochs-per-round",
        type=positive_int,
        default=TRAINING_DEFAULTS.epochs_per_round,
        metavar="N",
        help="local epochs before each exchange (default %(default)s)",
    )
    room.add_argument(
        "--round-timeout",
        type=positive_float,
        default=TRAINING_DEFAULTS.round_timeout,
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


def add_predict_options(parser: argparse.ArgumentParser) -> None:
    from ..training.model_file import SUFFIX

    parser.add_argument("model", metavar="MODEL", help=f"a saved model ({SUFFIX}, from --save)")
    source = parser.add_argument_group("images (one of)").add_mutually_exclusive_group(
        required=True
    )
    source.add_argument(
        "--data",
        metavar="FOLDER",
        help="a folder of images (PNG or TIFF, any size, multi-page TIFF stacks); masks beside "
        "them (NAME_mask.png, or a masks/ subfolder) give each image its Dice",
    )
    source.add_argument("--synthetic", action="store_true", help="simulated microscopy images")
    parser.add_argument(
        "--out", metavar="DIR", required=True, help="where the masks go (made if missing)"
    )
    synthetic = parser.add_argument_group("synthetic images")
    synthetic.add_argument(
        "--member",
        type=microscope_number,
        default=1,
        metavar="N",
        help=f"which simulated microscope, 1 to {MICROSCOPE_COUNT} (default 1)",
    )
    synthetic.add_argument(
        "--samples", type=positive_int, default=8, help="images (default %(default)s)"
    )
    synthetic.add_argument(
        "--seed",
        type=int,
        default=0,
        help="which draw (default 0); never the images `train --seed` trained on",
    )
    tiling = parser.add_argument_group("tiling of large images")
    tiling.add_argument(
        "--tile",
        type=positive_int,
        default=PREDICTION_TILE,
        help="tile side in pixels (default %(default)s)",
    )
    tiling.add_argument(
        "--overlap",
        type=count,
        default=PREDICTION_OVERLAP,
        help="pixels neighbouring tiles share, blended (default %(default)s)",
    )
    parser.add_argument(
        "--strict-data",
        action="store_true",
        help="refuse a folder with an unreadable file (default: leave it out with a warning)",
    )


def add_export_options(parser: argparse.ArgumentParser) -> None:
    from ..training.model_file import SUFFIX

    parser.add_argument("model", metavar="MODEL", help=f"a saved model ({SUFFIX}, from --save)")
    parser.add_argument(
        "--bioimageio",
        metavar="OUT.zip",
        required=True,
        help="write a bioimage.io model package (for Fiji/deepImageJ, ilastik, napari)",
    )
    parser.add_argument("--name", help="the model's name in the package")
    parser.add_argument(
        "--author",
        action="append",
        metavar="NAME",
        help="an author (repeat for several; default: a placeholder to edit)",
    )
    parser.add_argument(
        "--license", default="CC-BY-4.0", help="SPDX license of the model (default %(default)s)"
    )
    parser.add_argument(
        "--test",
        action="store_true",
        help="also run bioimage.io's test of the package (the test input through each "
        "weights format)",
    )
