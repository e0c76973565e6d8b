"""Make the helpers here and the robot contract mixin (tests/drivers) importable by name (tests/ has no packages)."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "drivers"))
