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


@pytest.fixture(scope="module", params=["torch", "daqp"])
def forward_engine(request):
    """Runs a module's tests once with each forward engine of a Polyhedron: the batched solver
    (``auto`` never picks DAQP) and DAQP (``auto`` always picks it on CPU, whatever the size;
    samples it does not certify still go to the batched solver)."""
    from polyproj.functional import active_set

    if request.param == "daqp" and not active_set.available():
        pytest.fail("daqp is a test dependency (pip install -e '.[test]')")
    original = active_set.applicable
    active_set.applicable = (lambda data, x: False) if request.param == "torch" else (
        lambda data, x: x.device.type == "cpu" and data.K > 0)
    try:
        yield request.param
    finally:
        active_set.applicable = original
