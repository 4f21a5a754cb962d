import pytest
import torch

from pyro_diffusion.data import HEARTBEAT_LOG_LIKELIHOOD_BITS, sample_heartbeat


def test_heartbeat_has_five_sequences():
    samples = sample_heartbeat(5000, torch.Generator().manual_seed(0))

    distinct, counts = samples.unique(dim=0, return_counts=True)
    assert samples.shape == (5000, 20)
    assert len(distinct) == 5
    assert (samples.sum(-1) == 4).all()
    assert (counts.float() / 5000 - 0.2).abs().max() < 0.03


def test_heartbeat_period_five():
    samples = sample_heartbeat(100, torch.Generator().manual_seed(1))

    torch.testing.assert_close(samples[:, 5:], samples[:, :-5])


def test_heartbeat_truth_bits():
    assert HEARTBEAT_LOG_LIKELIHOOD_BITS == pytest.approx(-2.3219, abs=1e-4)


@pytest.mark.parametrize("count", [0, -1, 2.0])
def test_heartbeat_bad_count(count):
    with pytest.raises(ValueError, match="num_samples"):
        sample_heartbeat(count)
