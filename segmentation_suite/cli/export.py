"""`segmentation-suite export`: a saved model as a bioimage.io model package, checked by
bioimage.io's own validator before the command says it is done."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.filesize import decimal

from .model import read_model
from .options import CommandError


def run_export(args: argparse.Namespace, console: Console) -> int:
    from ..training.export import ExportError, ExportOptions, check_package, export_bioimageio
    from ..training.model_file import ModelFileError

    saved = read_model(args.model)
    defaults = ExportOptions()
    options = ExportOptions(
        name=args.name or defaults.name,
        authors=args.author or defaults.authors,
        license=args.license,
    )
    try:
        path = export_bioimageio(saved, args.bioimageio, options)
        console.print(
            f"Wrote {path} ({decimal(path.stat().st_size)}): a bioimage.io model of "
            f"{saved.architecture}, weights as pytorch_state_dict and torchscript",
            markup=False,
            highlight=False,
        )
        status, report = check_package(path, run_test=args.test)
    except (ExportError, ModelFileError) as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(f"Cannot write {args.bioimageio}: {exc.strerror or exc}") from None
    checked = "format and test run" if args.test else "format"
    if status == "failed":
        console.print(report, markup=False, highlight=False)
        raise CommandError(f"bioimage.io's check of {path} failed ({checked}); see above")
    meaning = {
        "passed": "passed",
        "valid-format": "valid (with warnings, e.g. no maintainer with a GitHub name)",
    }.get(status, status)
    console.print(f"bioimage.io check ({checked}): {meaning}", markup=False, highlight=False)
    return 0
