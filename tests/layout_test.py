"""The layout rules as import-linter contracts (.importlinter): TensorFlow only in the data
package, no model code in it, stages independent, methods and backbones reached through
their registries, no import cycles, and the folders in layers (runtime > stages >
evaluation > encoder > training > methods > backbones, losses > leaves)."""

import subprocess
import sys

from tests.support import paths

ROOT = paths.REPO


def test_the_import_contracts_are_kept():
  # A process of its own: the analysis reads the files, and its report is the failure text.
  result = subprocess.run(
      [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
       "sys.exit(lint_imports(config_filename='.importlinter', no_cache=True, no_logo=True))"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
  assert "7 kept, 0 broken" in result.stdout
