"""Make agent_fixtures importable by name under pytest's importlib import mode (tests/ has no packages)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
