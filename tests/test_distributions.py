import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from pyro_diffusion.distributions import BinnedNormal, log_normal_interval_mass

LOW, HIGH, NUM_BINS = -1.0, 1.0, 16


def _centers(low=LOW, high=HIGH, num_bins=NUM_BINS, dtype=torch.float64):
    width = (high - low) / num_bins
    return low + width * (torch.arange(num_bins, dtype=dtype) + 0.5), width


def _bin_masses(loc, scale, low=LOW, high=HIGH, num_bins=NUM_BINS, dtype=torch.float64):
    """Return the probability of each bin, the density at its center times its width."""
    centers, width = _centers(low, high, num_bins, dtype)
    loc = torch.as_tensor(loc, dtype=dtype)
    scale = torch.as_tensor(scale, dtype=dtype)
    distribution = BinnedNormal(loc.expand(num_bins), scale.expand(num_bins), low, high, num_bins)
    return distribution.log_prob(centers).exp() * width


@settings(max_examples=60, deadline=None)
@given(
    loc=st.floats(-60, 60),
    log_scale=st.floats(math.log(1e-3), math.log(20)),
    low=st.floats(-5, 0),
    span=st.floats(0.1, 10),
    num_bins=st.integers(2, 300),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_bin_masses_sum_to_one(loc, log_scale, low, span, num_bins, dtype):
    masses = _bin_masses(loc, math.exp(log_scale), low, low + span, num_bins, dtype)

    tolerance = 1e-4 if dtype == torch.float32 else 1e-10
    assert masses.sum().item() == pytest.approx(1.0, abs=tolerance)


def test_bin_masses_match_normal_cdf():
    loc, scale = 0.2, 0.35
    masses = _bin_masses(loc, scale)

    edges = np.linspace(LOW, HIGH, NUM_BINS + 1)
    edges[0], edges[-1] = -np.inf, np.inf
    expected = np.diff(stats.norm.cdf(edges, loc, scale))
    np.testing.assert_allclose(masses.numpy(), expected, rtol=1e-10, atol=1e-15)


def _log_prob_gradients(loc, scale, dtype):
    """Evaluate ``log_prob`` at every bin center and return it with its gradients in loc and scale."""
    centers, _ = _centers(dtype=dtype)
    loc = torch.full((NUM_BINS,), loc, dtype=dtype, requires_grad=True)
    scale = torch.full((NUM_BINS,), scale, dtype=dtype, requires_grad=True)
    log_prob = BinnedNormal(loc, scale, LOW, HIGH, NUM_BINS).log_prob(centers)
    log_prob.sum().backward()
    return log_prob.detach(), loc.grad, scale.grad


@pytest.mark.parametrize("loc", [50.0, -50.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_far_loc_finite_gradients(loc, dtype):
    log_prob, loc_grad, scale_grad = _log_prob_gradients(loc, 0.01, dtype)

    assert torch.isfinite(log_prob).all()
    assert torch.isfinite(loc_grad).all()
    assert torch.isfinite(scale_grad).all()


@pytest.mark.parametrize("loc, scale", [(50.0, 1e-4), (-50.0, 1e-4), (1e4, 0.01), (-1e4, 0.01)])
def test_extreme_loc_finite_gradients_float64(loc, scale):
    log_prob, loc_grad, scale_grad = _log_prob_gradients(loc, scale, torch.float64)

    assert torch.isfinite(log_prob).all()
    assert torch.isfinite(loc_grad).all()
    assert torch.isfinite(scale_grad).all()


@pytest.mark.parametrize("loc, scale", [(50.0, 1e-4), (-50.0, 1e-4)])
def test_extreme_loc_finite_gradients_float32(loc, scale):
    _, loc_grad, scale_grad = _log_prob_gradients(loc, scale, torch.float32)

    assert torch.isfinite(loc_grad).all()
    assert torch.isfinite(scale_grad).all()


@pytest.mark.parametrize("loc", [50.0, -50.0])
def test_far_loc_float32_gradient_accurate(loc):
    _, loc_grad, scale_grad = _log_prob_gradients(loc, 0.01, torch.float32)
    _, loc_grad_64, scale_grad_64 = _log_prob_gradients(loc, 0.01, torch.float64)

    torch.testing.assert_close(loc_grad.double(), loc_grad_64, rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(scale_grad.double(), scale_grad_64, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("loc, scale", [(1.5, 0.05), (-0.5, 0.2)])
def test_near_loc_float32_gradient_accurate(loc, scale):
    _, loc_grad, scale_grad = _log_prob_gradients(loc, scale, torch.float32)
    _, loc_grad_64, scale_grad_64 = _log_prob_gradients(loc, scale, torch.float64)

    torch.testing.assert_close(loc_grad.double(), loc_grad_64, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(scale_grad.double(), scale_grad_64, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("loc, end", [(50.0, NUM_BINS - 1), (-50.0, 0)])
def test_far_loc_mass_in_end_bin(loc, end):
    masses = _bin_masses(loc, 0.01)

    assert masses[end].item() == pytest.approx(1.0, abs=1e-12)


def test_gradient_pulls_loc_toward_value():
    centers, _ = _centers(dtype=torch.float32)
    loc = torch.tensor(50.0, requires_grad=True)

    BinnedNormal(loc, torch.tensor(0.01), LOW, HIGH, NUM_BINS).log_prob(centers[3]).backward()

    assert loc.grad.item() < 0


@pytest.mark.parametrize("loc", [-0.93, -0.1, 0.01, 0.37, 0.99])
def test_tiny_scale_concentrates_in_loc_bin(loc):
    masses = _bin_masses(loc, 1e-5)

    index = math.floor((loc - LOW) / ((HIGH - LOW) / NUM_BINS))
    assert masses[index].item() == pytest.approx(1.0, abs=1e-9)
    assert masses.argmax().item() == index


@pytest.mark.parametrize("loc, scale", [(0.0, 0.3), (0.9, 0.05), (-3.0, 2.0), (40.0, 0.01)])
def test_samples_inside_range(loc, scale):
    distribution = BinnedNormal(torch.tensor(loc), torch.tensor(scale), LOW, HIGH, NUM_BINS)

    samples = distribution.sample((20000,), generator=torch.Generator().manual_seed(0))

    assert samples.shape == (20000,)
    assert (samples >= LOW).all()
    assert (samples < HIGH).all()


def test_sample_frequencies_match_masses():
    loc, scale, num_samples = 0.1, 0.4, 20000
    distribution = BinnedNormal(torch.tensor(loc), torch.tensor(scale), LOW, HIGH, NUM_BINS)

    samples = distribution.sample((num_samples,), generator=torch.Generator().manual_seed(1))

    counts = torch.bincount(distribution.bin_index(samples).long(), minlength=NUM_BINS)
    expected = _bin_masses(loc, scale) * num_samples
    keep = expected > 5
    statistic = (((counts[keep] - expected[keep]) ** 2) / expected[keep]).sum().item()
    p_value = stats.chi2.sf(statistic, int(keep.sum()) - 1)
    assert p_value > 1e-3


def test_samples_uniform_within_bin():
    width = (HIGH - LOW) / NUM_BINS
    center = LOW + 8.5 * width
    distribution = BinnedNormal(torch.tensor(center), torch.tensor(1e-6), LOW, HIGH, NUM_BINS)

    samples = distribution.sample((5000,), generator=torch.Generator().manual_seed(2))

    offsets = ((samples - LOW) / width - 8).numpy()
    assert stats.kstest(offsets, "uniform").pvalue > 1e-3


def test_sample_reproducible_with_generator():
    distribution = BinnedNormal(torch.zeros(3), torch.ones(3), LOW, HIGH, NUM_BINS)

    first = distribution.sample((10,), generator=torch.Generator().manual_seed(4))
    second = distribution.sample((10,), generator=torch.Generator().manual_seed(4))

    assert torch.equal(first, second)


@pytest.mark.parametrize("value, bin_value", [(LOW - 1e-6, LOW + 1e-3), (HIGH, HIGH - 1e-3), (HIGH + 5.0, HIGH - 1e-3)])
def test_outside_values_use_end_bin(value, bin_value):
    distribution = BinnedNormal(torch.tensor(0.3), torch.tensor(0.5), LOW, HIGH, NUM_BINS)

    log_prob = distribution.log_prob(torch.tensor(value))

    assert log_prob.item() == distribution.log_prob(torch.tensor(bin_value)).item()


def test_density_constant_within_bin():
    distribution = BinnedNormal(torch.tensor(0.3), torch.tensor(0.5), LOW, HIGH, NUM_BINS)
    width = (HIGH - LOW) / NUM_BINS
    values = LOW + 5 * width + torch.tensor([0.01, 0.5, 0.99]) * width

    log_prob = distribution.log_prob(values)

    assert (log_prob == log_prob[0]).all()


def test_interval_mass_in_both_tails():
    lower = torch.tensor([-40.0, 30.0, -1.0], dtype=torch.float64)
    upper = torch.tensor([-39.0, 31.0, 2.0], dtype=torch.float64)

    result = log_normal_interval_mass(lower, upper)

    expected = [
        stats.norm.logcdf(-39.0) + math.log1p(-math.exp(stats.norm.logcdf(-40.0) - stats.norm.logcdf(-39.0))),
        stats.norm.logsf(30.0) + math.log1p(-math.exp(stats.norm.logsf(31.0) - stats.norm.logsf(30.0))),
        math.log(stats.norm.cdf(2.0) - stats.norm.cdf(-1.0)),
    ]
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-10)


def test_batch_and_event_shapes():
    loc = torch.zeros(4, 3)
    distribution = BinnedNormal(loc, torch.ones(3), LOW, HIGH, NUM_BINS).to_event(1)

    assert distribution.batch_shape == (4,)
    assert distribution.event_shape == (3,)
    assert distribution.log_prob(torch.zeros(4, 3)).shape == (4,)
    assert distribution.sample((2,)).shape == (2, 4, 3)


def test_expand_keeps_bins():
    distribution = BinnedNormal(torch.tensor(0.2), torch.tensor(0.4), LOW, HIGH, NUM_BINS)

    expanded = distribution.expand((5,))

    value = torch.full((5,), 0.33)
    assert expanded.batch_shape == (5,)
    assert torch.equal(expanded.log_prob(value), distribution.log_prob(value).expand(5))


@pytest.mark.parametrize(
    "low, high, num_bins, message",
    [(1.0, 1.0, 4, "low < high"), (2.0, 1.0, 4, "low < high"), (0.0, 1.0, 1, "num_bins >= 2")],
)
def test_bad_arguments_raise(low, high, num_bins, message):
    with pytest.raises(ValueError, match=message):
        BinnedNormal(torch.tensor(0.0), torch.tensor(1.0), low, high, num_bins)


def test_moments_not_available():
    distribution = BinnedNormal(torch.tensor(0.0), torch.tensor(1.0), LOW, HIGH, NUM_BINS)

    with pytest.raises(NotImplementedError):
        distribution.mean
    with pytest.raises(NotImplementedError):
        distribution.variance
