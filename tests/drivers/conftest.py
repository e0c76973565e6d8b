"""Make driver_helpers importable by name (tests/ has no packages)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
