"""Where things are: the repository root and the tests' committed files."""

import pathlib

REPO = pathlib.Path(__file__).resolve().parents[2]
FILES = REPO / "tests" / "support" / "files"  # Pins and checkpoints the tests compare with.
