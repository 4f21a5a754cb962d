import pyro
import pytest
import torch

# One intra-op thread, because the tests use small tensors. With both cores
# of a 2-core machine busy, a second thread made element-wise operations on
# 1e5 float64 values about 60 times slower (torch 2.14.1).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def fresh_pyro_state():
    """Clear the global param store, enable validation and seed every test."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    torch.set_default_dtype(torch.float32)
    yield
    pyro.clear_param_store()
