import math

import numpy
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate

from pyro_diffusion.data import swiss_roll
from pyro_diffusion.data.swiss_roll import (
    U_MAX,
    U_MIN,
    default_num_panels,
    sample_swiss_roll,
    swiss_roll_log_prob,
    swiss_roll_scale,
)

# Expected log density at noise 0.05 in bits per example. It was computed by
# integrating swiss_roll_log_prob over u (4000 midpoints) and the 2-D noise
# (5 x 5 Gauss-Hermite nodes): 1.3811 bits. A Monte Carlo mean over 100 000 samples
# gave 1.379 +- 0.0035 bits.
EXPECTED_BITS_AT_NOISE_005 = 1.3811


def _closed_form_scale(noise: float) -> float:
    # E[u^2] = 9.75 pi^2, E[u cos u] = 2 and E[u sin u] = 2 / (3 pi) for
    # u ~ Uniform[1.5 pi, 4.5 pi], from the antiderivatives u sin u + cos u and
    # sin u - u cos u.
    curve_variance = 0.5 * (9.75 * math.pi**2 - 4.0 - (2.0 / (3.0 * math.pi)) ** 2)
    return math.sqrt(curve_variance + noise**2)


def _thin_tube_log_prob_nats(noise: float) -> float:
    # For small noise, p(x) ~ N(distance to curve; 0, sigma^2) / (3 pi |gamma'(u)|) in
    # raw units, so E[log p] = -log(3 pi) - E[log |gamma'(u)|] - log(2 pi sigma^2) / 2
    # - 1/2 + 2 log c, up to curvature and end-of-curve terms.
    width = U_MAX - U_MIN
    mean_log_speed = integrate.quad(lambda u: 0.5 * math.log1p(u * u), U_MIN, U_MAX)[0] / width
    scale = swiss_roll_scale(noise)
    return (
        -math.log(width)
        - mean_log_speed
        - 0.5 * math.log(2.0 * math.pi * noise**2)
        - 0.5
        + 2.0 * math.log(scale)
    )


def _curve(u: torch.Tensor) -> torch.Tensor:
    return torch.stack([u * torch.cos(u), u * torch.sin(u)], dim=-1)


@settings(max_examples=30, deadline=None)
@given(noise=st.floats(min_value=1e-3, max_value=3.0))
def test_scale_matches_closed_form(noise):
    assert swiss_roll_scale(noise) == pytest.approx(_closed_form_scale(noise), rel=1e-13)


def test_scale_default_noise_value():
    assert swiss_roll_scale(0.05) == pytest.approx(6.789278727, rel=1e-9)


def test_sample_shape_and_dtype():
    samples = sample_swiss_roll(7, generator=torch.Generator().manual_seed(0))

    assert samples.shape == (7, 2)
    assert samples.dtype == torch.float32
    assert torch.isfinite(samples).all()


@pytest.mark.parametrize("noise", [0.05, 0.3, 1.0])
def test_sample_variance_is_one(noise):
    samples = sample_swiss_roll(20_000, noise=noise, generator=torch.Generator().manual_seed(1))
    variance = samples.double().var(dim=0).mean().item()

    assert variance == pytest.approx(1.0, abs=0.03)


def test_sample_mean_matches_curve_mean():
    samples = sample_swiss_roll(20_000, generator=torch.Generator().manual_seed(2))
    mean = samples.double().mean(dim=0)
    scale = swiss_roll_scale(0.05)

    assert mean[0].item() == pytest.approx(2.0 / scale, abs=0.02)
    assert mean[1].item() == pytest.approx(2.0 / (3.0 * math.pi) / scale, abs=0.02)


def test_same_seed_same_samples():
    first = sample_swiss_roll(100, generator=torch.Generator().manual_seed(42))
    second = sample_swiss_roll(100, generator=torch.Generator().manual_seed(42))
    other = sample_swiss_roll(100, generator=torch.Generator().manual_seed(43))

    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_samples_lie_near_curve():
    noise = 0.05
    scale = swiss_roll_scale(noise)
    samples = sample_swiss_roll(200, noise=noise, generator=torch.Generator().manual_seed(3))
    curve = _curve(torch.linspace(U_MIN, U_MAX, 200_000, dtype=torch.float64)) / scale
    distance = torch.cdist(samples.double(), curve).min(dim=1).values

    # The distance to the curve is at most |noise epsilon| / c, and |epsilon| < 6 for
    # 200 standard normal 2-D draws except with probability about 3e-6.
    assert distance.max().item() < 6.0 * noise / scale


@pytest.mark.parametrize("noise", [0.3, 1.0])
def test_density_integrates_to_one(noise):
    scale = swiss_roll_scale(noise)
    curve = _curve(torch.linspace(U_MIN, U_MAX, 10_000, dtype=torch.float64))
    margin = 8.0 * noise
    low = (curve.min(dim=0).values - margin) / scale
    high = (curve.max(dim=0).values + margin) / scale

    # Midpoint rule with spacing of half a (scaled) noise standard deviation.
    spacing = 0.5 * noise / scale
    axes = []
    for dim in range(2):
        num_cells = math.ceil((high[dim] - low[dim]).item() / spacing)
        axes.append(low[dim] + spacing * (torch.arange(num_cells, dtype=torch.float64) + 0.5))
    grid = torch.cartesian_prod(axes[0], axes[1])
    total = swiss_roll_log_prob(grid, noise=noise).exp().sum().item() * spacing**2

    assert total == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("noise", [0.05, 0.3])
def test_log_prob_stable_under_doubled_panels(noise):
    samples = sample_swiss_roll(500, noise=noise, generator=torch.Generator().manual_seed(4))
    samples = samples.double()
    default = swiss_roll_log_prob(samples, noise=noise)
    doubled = swiss_roll_log_prob(samples, noise=noise, num_panels=2 * default_num_panels(noise))
    coarse = swiss_roll_log_prob(samples, noise=noise, num_panels=default_num_panels(noise) // 8)

    assert (doubled - default).abs().max().item() < 1e-8
    # A much coarser rule must differ, otherwise the comparison above proves nothing.
    assert (coarse - default).abs().max().item() > 1e-6


def test_bits_per_example_at_default_noise():
    samples = sample_swiss_roll(4000, generator=torch.Generator().manual_seed(5))
    log_prob_bits = swiss_roll_log_prob(samples.double()) / math.log(2.0)
    mean_bits = log_prob_bits.mean().item()
    standard_error = log_prob_bits.std().item() / math.sqrt(len(log_prob_bits))

    assert abs(mean_bits - EXPECTED_BITS_AT_NOISE_005) < 4.0 * standard_error


def test_expected_log_prob_matches_thin_tube_limit():
    # Integrates E[log p(x)] over u with 1000 midpoints and over the noise with 3 x 3
    # Gauss-Hermite nodes, which is exact for a log density quadratic in the noise.
    noise = 0.05
    scale = swiss_roll_scale(noise)
    num_strata = 1000
    u = U_MIN + (U_MAX - U_MIN) * (torch.arange(num_strata, dtype=torch.float64) + 0.5) / num_strata
    hermite_nodes, hermite_weights = numpy.polynomial.hermite_e.hermegauss(3)
    hermite_weights = hermite_weights / hermite_weights.sum()
    first, second = numpy.meshgrid(hermite_nodes, hermite_nodes)
    epsilon = torch.tensor(numpy.stack([first.ravel(), second.ravel()], axis=1))
    weights = torch.tensor(numpy.outer(hermite_weights, hermite_weights).ravel())

    points = (_curve(u)[:, None, :] + noise * epsilon[None, :, :]) / scale
    log_prob = swiss_roll_log_prob(points.reshape(-1, 2), noise=noise).reshape(num_strata, -1)
    expected_nats = (log_prob * weights).sum(dim=1).mean().item()

    assert expected_nats / math.log(2.0) == pytest.approx(EXPECTED_BITS_AT_NOISE_005, abs=3e-3)
    # The end-of-curve terms left out of the thin-tube limit are about 0.002 bits.
    assert expected_nats == pytest.approx(_thin_tube_log_prob_nats(noise), abs=5e-3)


def test_log_prob_same_for_any_chunk_size(monkeypatch):
    samples = sample_swiss_roll(50, noise=0.3, generator=torch.Generator().manual_seed(6)).double()
    whole = swiss_roll_log_prob(samples, noise=0.3)
    num_nodes = 8 * default_num_panels(0.3)
    # Chunks of 7 examples, so the last chunk is partial.
    monkeypatch.setattr(swiss_roll, "_CHUNK_BYTES", 7 * 8 * num_nodes)
    chunked = swiss_roll_log_prob(samples, noise=0.3)

    assert torch.allclose(whole, chunked, rtol=0.0, atol=1e-12)


def test_log_prob_keeps_dtype():
    samples = sample_swiss_roll(10, generator=torch.Generator().manual_seed(7))

    assert swiss_roll_log_prob(samples).dtype == torch.float32
    assert swiss_roll_log_prob(samples.double()).dtype == torch.float64
    assert swiss_roll_log_prob(samples[:0]).shape == (0,)


@settings(max_examples=25, deadline=None)
@given(
    point=st.tuples(
        st.floats(min_value=-100.0, max_value=100.0),
        st.floats(min_value=-100.0, max_value=100.0),
    )
)
def test_log_prob_finite_anywhere(point):
    log_prob = swiss_roll_log_prob(torch.tensor([point], dtype=torch.float64), noise=0.3)

    assert torch.isfinite(log_prob).all()
    # The maximum log density at noise 0.3, on the curve itself, is about 0.27.
    assert log_prob.item() < 3.0


@pytest.mark.parametrize("noise", [0.0, -0.1, math.nan, math.inf])
def test_invalid_noise_rejected(noise):
    with pytest.raises(ValueError, match="noise="):
        swiss_roll_scale(noise)
    with pytest.raises(ValueError, match="noise="):
        sample_swiss_roll(10, noise=noise)
    with pytest.raises(ValueError, match="noise="):
        swiss_roll_log_prob(torch.zeros(3, 2), noise=noise)


@pytest.mark.parametrize("num_samples", [0, -5])
def test_invalid_num_samples_rejected(num_samples):
    with pytest.raises(ValueError, match=f"num_samples={num_samples}"):
        sample_swiss_roll(num_samples)


@pytest.mark.parametrize("shape", [(5,), (5, 3), (2, 5, 2)])
def test_log_prob_rejects_bad_shape(shape):
    with pytest.raises(ValueError, match=r"expects shape \[N, 2\]"):
        swiss_roll_log_prob(torch.zeros(shape))


def test_log_prob_rejects_integer_points():
    with pytest.raises(ValueError, match="floating dtype"):
        swiss_roll_log_prob(torch.zeros(3, 2, dtype=torch.long))


def test_log_prob_rejects_zero_panels():
    with pytest.raises(ValueError, match="num_panels=0"):
        swiss_roll_log_prob(torch.zeros(3, 2), num_panels=0)
