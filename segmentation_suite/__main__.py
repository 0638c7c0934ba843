"""`python -m segmentation_suite`: the `segmentation-suite` command line (see cli/)."""

from __future__ import annotations

import sys

from segmentation_suite.cli import main

if __name__ == "__main__":
    sys.exit(main())
