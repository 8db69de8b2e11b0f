from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session", autouse=True)
def _two_threads():
    # CI has 2 cores; more threads only oversubscribe.
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    """Official-format state dict of a tiny config (see scripts/reference_parity.py)."""
    return FIXTURES / "sam_tiny.pth"


@pytest.fixture(scope="session")
def golden() -> dict:
    """Reference (segment-anything 1.0) outputs on the tiny checkpoint."""
    return torch.load(FIXTURES / "sam_tiny_golden.pt", weights_only=True)
