import numpy as np
import pytest

import pyattn
from pyattn import _core

ISAS = list(_core.available_isas())


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(params=ISAS)
def isa(request):
    """Runs the test once per kernel set this CPU can run (scalar always), restoring the previous one."""
    before = pyattn.get_isa()
    pyattn.set_isa(request.param)
    yield request.param
    pyattn.set_isa(before)


@pytest.fixture(params=[1, 2])
def threads(request):
    before = pyattn.get_num_threads()
    pyattn.set_num_threads(request.param)
    yield request.param
    pyattn.set_num_threads(before)


@pytest.fixture
def restore_isa():
    """For tests that loop over kernel sets themselves (pyattn.set_isa): the previous one restored."""
    before = pyattn.get_isa()
    yield
    pyattn.set_isa(before)


@pytest.fixture
def restore_threads():
    before = pyattn.get_num_threads()
    yield
    pyattn.set_num_threads(before)


def randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)
