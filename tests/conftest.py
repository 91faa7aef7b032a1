import os

import numpy as np
import pytest
import torch
from hypothesis import settings

# The default profile is derandomised so that the suite is reproducible; run with
# HYPOTHESIS_PROFILE=explore to search new examples.
settings.register_profile("default", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
