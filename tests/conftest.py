import random

import numpy as np
import pytest
import torch

# Tests that take tens of seconds to minutes: the book build and the two-process DDP run.
# Every notebook cell that nbval checks is slow too (a chapter runs for minutes).
# `pytest -m "not slow"` is the fast development loop; plain `pytest` runs everything.
SLOW_TEST_FILES = {"test_book.py", "test_ddp.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.suffix == ".ipynb" or item.path.name in SLOW_TEST_FILES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same random state, so failures reproduce."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
