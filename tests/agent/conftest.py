"""Agent tests: single-threaded torch (the machine is shared), and agent_fixtures importable by name under pytest's
importlib import mode (tests/ has no packages)."""

import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent))
