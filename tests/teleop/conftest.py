import sys
from pathlib import Path

import pytest

# the driver tests' helpers (free ports, in-process driver)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "drivers"))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    import torch

    torch.set_num_threads(1)  # 2 shared cores
