"""Where the tests find the source tree, the repository and ``shared/``: one place, so moving a test breaks no path."""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
SRC = PACKAGE_DIR.parent
REPO_ROOT = SRC.parent
CONTRACT = REPO_ROOT.parent / "shared" / "contract.md"
