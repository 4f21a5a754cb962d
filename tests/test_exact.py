import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
import pyro.distributions as dist
from pyro.distributions.kl import kl_divergence
from scipy import stats

from pyro_diffusion.exact import (
    GaussianDataReverse,
    LinearGaussianReverse,
    closed_form_bound,
    closed_form_terms,
    gaussian_log_likelihood,
    linear_chain_marginal,
)
from pyro_diffusion.forward import GaussianForward
from pyro_diffusion.schedules import BetaSchedule

KINDS = ["paper", "linear", "cosine"]


def _forward(kind, num_steps, event_dim=1):
    return GaussianForward(BetaSchedule.from_name(kind, num_steps), event_dim=event_dim)


def _coefficients(kernel):
    return kernel.loc_coef, kernel.loc_offset, kernel.log_variance


def _bound(kernel, x0):
    return closed_form_bound(kernel.forward_process, *_coefficients(kernel), x0)


def _perturbed(kernel):
    """Build a linear kernel whose coefficients all differ from those of ``kernel``."""
    return LinearGaussianReverse(
        kernel.forward_process,
        kernel.loc_coef * 1.1,
        kernel.loc_offset + 0.2,
        kernel.log_variance + 0.3,
        kernel.event_shape,
    )


def _joint_moments_by_steps(forward, mean, variance, t):
    """
    Propagate ``x_0 ~ N(mean, variance)`` through the one-step kernels to
    the moments of ``x_{t-1}`` and ``x_t`` and their covariance, each step
    ``x_s = sqrt(1 - beta_s) x_{s-1} + sqrt(beta_s) noise``.
    """
    unit_input = torch.ones(1, 1, dtype=torch.float64)
    means, variances = [mean], [variance]
    for s in range(1, t + 1):
        kernel = forward.step(unit_input, s)
        coef = kernel.mean[0, 0]
        means.append(coef * means[-1])
        variances.append(coef**2 * variances[-1] + kernel.variance[0, 0])
    step_coef = forward.step(unit_input, t).mean[0, 0]
    covariance = step_coef * variances[t - 1]
    return means[t - 1], variances[t - 1], means[t], variances[t], covariance


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    num_steps=st.integers(1, 40),
    fraction=st.floats(0, 1),
    mean=st.floats(-5, 5),
    variance=st.floats(0.01, 10),
)
def test_kernel_is_gaussian_conditional(kind, num_steps, fraction, mean, variance):
    t = 1 + round(fraction * (num_steps - 1))
    forward = _forward(kind, num_steps)
    kernel = GaussianDataReverse(forward, mean, variance, (1,))
    m_prev, v_prev, m_t, v_t, covariance = _joint_moments_by_steps(
        forward, torch.tensor(mean, dtype=torch.float64), torch.tensor(variance, dtype=torch.float64), t
    )

    slope = covariance / v_t
    x_t = torch.tensor([[m_t + 1.7 * v_t.sqrt()]], dtype=torch.float64)
    loc, log_variance = kernel.loc_log_variance(x_t, t)

    expected_loc = m_prev + slope * (x_t - m_t)
    expected_variance = v_prev - slope * covariance
    torch.testing.assert_close(loc, expected_loc, rtol=1e-9, atol=1e-9)
    assert log_variance.exp().item() == pytest.approx(expected_variance.item(), rel=1e-7)


def test_kernel_matches_sampled_regression():
    forward = _forward("cosine", 8)
    mean, variance, t, num_samples = 1.5, 0.4, 3, 200000
    kernel = GaussianDataReverse(forward, mean, variance, (1,))
    generator = torch.Generator().manual_seed(3)
    x = mean + math.sqrt(variance) * torch.randn(num_samples, 1, dtype=torch.float64, generator=generator)
    for s in range(1, t):
        x = forward.step(x, s).sample()
    x_prev = x
    x_t = forward.step(x_prev, t).sample()

    # Least squares of x_{t-1} on x_t estimates the slope and intercept of the
    # conditional mean, and the residual variance estimates the conditional variance.
    design = torch.cat([x_t, torch.ones_like(x_t)], dim=1)
    solution = torch.linalg.lstsq(design, x_prev).solution
    residual_variance = (x_prev - design @ solution).var()

    assert solution[0, 0].item() == pytest.approx(kernel.loc_coef[t - 1, 0].item(), abs=0.01)
    assert solution[1, 0].item() == pytest.approx(kernel.loc_offset[t - 1, 0].item(), abs=0.01)
    assert residual_variance.item() == pytest.approx(kernel.log_variance[t - 1, 0].exp().item(), rel=0.01)


@pytest.mark.parametrize("kind", KINDS)
def test_exact_chain_reproduces_data(kind):
    mean = torch.tensor([2.0, -1.0, 0.0], dtype=torch.float64)
    variance = torch.tensor([0.5, 2.0, 1e-3], dtype=torch.float64)
    kernel = GaussianDataReverse(_forward(kind, 12), mean, variance, (3,))

    chain_mean = kernel.marginal_loc[-1]
    chain_variance = kernel.marginal_variance[-1]
    for index in range(11, -1, -1):
        a = kernel.loc_coef[index]
        chain_mean = a * chain_mean + kernel.loc_offset[index]
        chain_variance = a**2 * chain_variance + kernel.log_variance[index].exp()

    torch.testing.assert_close(chain_mean, mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(chain_variance, variance, rtol=1e-10, atol=1e-12)


def test_marginals_match_forward():
    forward = _forward("linear", 10)
    kernel = GaussianDataReverse(forward, 3.0, 0.25, (1,))
    t = torch.arange(11)

    abar = forward.schedule.alphas_bar[t].unsqueeze(-1)
    torch.testing.assert_close(kernel.marginal_loc, abar.sqrt() * 3.0)
    torch.testing.assert_close(kernel.marginal_variance, abar * 0.25 + 1 - abar)


@pytest.mark.parametrize("kind", KINDS)
def test_standard_data_reverse_is_forward_kernel(kind):
    forward = _forward(kind, 10)
    kernel = GaussianDataReverse(forward, 0.0, 1.0, (2,))
    betas = forward.schedule.betas[1:].unsqueeze(-1).expand(10, 2)

    torch.testing.assert_close(kernel.loc_coef, (1 - betas).sqrt())
    torch.testing.assert_close(kernel.loc_offset, torch.zeros(10, 2, dtype=torch.float64))
    torch.testing.assert_close(kernel.log_variance, betas.log())


@pytest.mark.parametrize("event_shape", [(3,), (2, 2)])
@pytest.mark.parametrize("t", [torch.tensor(4), torch.tensor([1, 2, 5, 5, 3])])
def test_kernel_shapes(event_shape, t):
    forward = _forward("paper", 5, event_dim=len(event_shape))
    kernel = GaussianDataReverse(forward, torch.tensor(1.0), torch.rand(event_shape) + 0.5, event_shape)
    x_t = torch.randn((5,) + event_shape)

    loc, log_variance = kernel.loc_log_variance(x_t, t)
    distribution = kernel.distribution(x_t, t)

    assert kernel.loc_coef.shape == (5,) + event_shape
    assert loc.shape == x_t.shape
    assert loc.dtype == torch.float32
    assert log_variance.expand_as(loc).shape == x_t.shape
    assert distribution.batch_shape == (5,)
    assert distribution.event_shape == event_shape


def test_per_step_scalar_coefficients_broadcast():
    forward = _forward("paper", 4)
    kernel = LinearGaussianReverse(forward, torch.full((4,), 0.9), torch.zeros(4), torch.full((4,), -1.0), (3,))
    x_t = torch.randn(2, 3)

    loc, log_variance = kernel.loc_log_variance(x_t, 2)

    torch.testing.assert_close(loc, 0.9 * x_t)
    assert (log_variance == -1.0).all()


@pytest.mark.parametrize(
    "mean, variance, message",
    [
        (0.0, 0.0, "positive"),
        (0.0, -1.0, "positive"),
        (0.0, float("nan"), "positive"),
        (0.0, float("inf"), "positive"),
        (float("nan"), 1.0, "finite"),
        (torch.zeros(3), 1.0, "broadcast"),
        (0.0, torch.ones(2, 2), "broadcast"),
    ],
)
def test_bad_data_moments_raise(mean, variance, message):
    with pytest.raises(ValueError, match=message):
        GaussianDataReverse(_forward("paper", 5), mean, variance, (2,))


@pytest.mark.parametrize(
    "shape, message",
    [((4, 2), "T = 5 rows"), ((5, 3), "broadcast"), ((5, 1, 2), "more trailing"), ((), "T = 5 rows")],
)
def test_bad_coefficient_shape_raises(shape, message):
    good = torch.zeros(5, 2)
    with pytest.raises(ValueError, match=message):
        LinearGaussianReverse(_forward("paper", 5), torch.zeros(shape), good, good, (2,))


def test_nonfinite_coefficient_raises():
    good = torch.zeros(5, 2)
    bad = good.clone()
    bad[3, 1] = float("inf")

    with pytest.raises(ValueError, match="log_variance"):
        LinearGaussianReverse(_forward("paper", 5), good, good, bad, (2,))


def test_event_dim_mismatch_raises():
    with pytest.raises(ValueError, match="event_dim = 1"):
        GaussianDataReverse(_forward("paper", 5), 0.0, 1.0, (2, 2))


def test_log_likelihood_matches_scipy():
    x0 = torch.randn(7, 3, dtype=torch.float64)
    mean = torch.tensor([0.5, -2.0, 1.0], dtype=torch.float64)
    variance = torch.tensor([0.3, 1.0, 4.0], dtype=torch.float64)

    result = gaussian_log_likelihood(x0, mean, variance)

    expected = stats.norm.logpdf(x0.numpy(), mean.numpy(), variance.sqrt().numpy()).sum(-1)
    assert result.shape == (7,)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-12)


def _hermite_expectation(function, mean, variance, num_nodes=12):
    """
    Compute ``E function(x)`` for ``x ~ N(mean, variance)`` by Gauss-Hermite
    quadrature. ``function`` must be a sum over dimensions of functions of
    one dimension each. Evaluating every dimension at the same node is then
    exact, because the expectation of a sum is the sum of the expectations.
    """
    nodes, weights = np.polynomial.hermite_e.hermegauss(num_nodes)
    total = 0.0
    for node, weight in zip(nodes.tolist(), weights.tolist()):
        total = total + weight * function(mean + variance.sqrt() * node)
    return total / math.sqrt(2 * math.pi)


@pytest.mark.parametrize("perturb", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_terms_match_quadrature(kind, perturb):
    forward = _forward(kind, 6)
    kernel = GaussianDataReverse(forward, torch.tensor([1.0, -0.5]), torch.tensor([0.3, 2.0]), (2,))
    if perturb:
        kernel = _perturbed(kernel)
    x0 = torch.randn(5, 2, dtype=torch.float64)
    schedule = forward.schedule

    terms = closed_form_terms(forward, *_coefficients(kernel), x0)

    def marginal_moments(t):
        return schedule.sqrt_alphas_bar[t] * x0, schedule.one_minus_alphas_bar[t]

    for t in range(2, 7):

        def kl(x_t, t=t):
            return kl_divergence(forward.posterior(x_t, x0, t), kernel.distribution(x_t, t))

        expected = _hermite_expectation(kl, *marginal_moments(t))
        torch.testing.assert_close(terms.diffusion[:, t - 2], expected, rtol=1e-9, atol=1e-9)

    def decoder(x_1):
        loc, log_variance = kernel.loc_log_variance(x_1, 1)
        return dist.Normal(loc, (0.5 * log_variance).exp()).log_prob(x0).sum(-1)

    expected_decoder = _hermite_expectation(decoder, *marginal_moments(1))
    torch.testing.assert_close(terms.decoder, expected_decoder, rtol=1e-9, atol=1e-9)

    zeros = torch.zeros(2, dtype=torch.float64)
    prior = dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)
    expected_prior = kl_divergence(forward.marginal(x0, 6), prior)
    torch.testing.assert_close(terms.prior, expected_prior, rtol=1e-9, atol=1e-12)


def test_terms_shapes_single_step():
    forward = _forward("paper", 1)
    kernel = GaussianDataReverse(forward, 0.5, 2.0, (3,))
    x0 = torch.randn(4, 3)

    terms = closed_form_terms(forward, *_coefficients(kernel), x0)

    assert terms.prior.shape == (4,)
    assert terms.diffusion.shape == (4, 0)
    assert terms.decoder.shape == (4,)
    assert terms.elbo().dtype == torch.float64


@pytest.mark.parametrize("kind", KINDS)
def test_bound_tight_for_standard_data(kind):
    kernel = GaussianDataReverse(_forward(kind, 10), 0.0, 1.0, (3,))
    x0 = 2 * torch.randn(6, 3, dtype=torch.float64)

    bound = _bound(kernel, x0)

    torch.testing.assert_close(bound, gaussian_log_likelihood(x0, 0.0, 1.0), rtol=1e-10, atol=1e-10)


def _prior_mismatch(kernel, x0):
    """
    ``E_{q(x_T | x0)} [log q(x_T) - log N(x_T; 0, I)]`` in closed form, the
    gap between the exact kernel's bound and ``log q(x0)``.
    """
    schedule = kernel.forward_process.schedule
    num_steps = schedule.num_steps
    mean = schedule.sqrt_alphas_bar[num_steps] * x0
    variance = schedule.one_minus_alphas_bar[num_steps]
    loc, scale = kernel.marginal_loc[-1], kernel.marginal_variance[-1]
    expected_log_q = -0.5 * (torch.log(2 * math.pi * scale) + ((mean - loc) ** 2 + variance) / scale)
    expected_log_prior = -0.5 * (math.log(2 * math.pi) + mean**2 + variance)
    return (expected_log_q - expected_log_prior).sum(-1)


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    num_steps=st.integers(1, 30),
    mean=st.floats(-4, 4),
    variance=st.floats(0.05, 5),
    spread=st.floats(0.1, 4),
)
def test_bound_identity_for_exact_kernel(kind, num_steps, mean, variance, spread):
    kernel = GaussianDataReverse(_forward(kind, num_steps), mean, variance, (2,))
    x0 = mean + spread * torch.randn(8, 2, dtype=torch.float64)

    bound = _bound(kernel, x0)

    # With the exact kernels log p(x_{0:T}) - log q(x_{1:T} | x0) equals
    # log q(x0) + log p(x_T) - log q(x_T), so only the prior mismatch remains.
    expected = gaussian_log_likelihood(x0, mean, variance) - _prior_mismatch(kernel, x0)
    torch.testing.assert_close(bound, expected, rtol=1e-8, atol=1e-8)


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    num_steps=st.integers(1, 30),
    mean=st.floats(-4, 4),
    variance=st.floats(0.05, 5),
    perturb=st.booleans(),
)
def test_bound_below_model_likelihood(kind, num_steps, mean, variance, perturb):
    kernel = GaussianDataReverse(_forward(kind, num_steps), mean, variance, (2,))
    if perturb:
        kernel = _perturbed(kernel)
    x0 = mean + 3 * torch.randn(16, 2, dtype=torch.float64)

    bound = _bound(kernel, x0)

    model_mean, model_variance = linear_chain_marginal(*_coefficients(kernel))
    log_likelihood = gaussian_log_likelihood(x0, model_mean, model_variance)
    assert (bound <= log_likelihood + 1e-9).all()


@pytest.mark.parametrize("kind", KINDS)
def test_average_bound_below_data_likelihood(kind):
    mean, variance, num_examples = 2.0, 0.5, 20000
    kernel = GaussianDataReverse(_forward(kind, 5), mean, variance, (1,))
    x0 = mean + math.sqrt(variance) * torch.randn(num_examples, 1, dtype=torch.float64)

    gap = _bound(kernel, x0) - gaussian_log_likelihood(x0, mean, variance)

    # E_x0 of the gap is -KL(q(x_T) || N(0, I)) < 0.
    loc, scale = kernel.marginal_loc[-1, 0], kernel.marginal_variance[-1, 0]
    kl = 0.5 * (scale + loc**2 - 1 - scale.log())
    stderr = gap.std() / math.sqrt(num_examples)
    assert gap.mean() < 0
    assert abs(gap.mean() + kl) < 4 * stderr


def test_data_density_not_per_example_bound():
    # The model starts from N(0, I), not q(x_T), so an example whose q(x_T | x0)
    # sits where N(0, I) exceeds q(x_T) gets a bound above log N(x0; m, v).
    mean, variance = 3.0, 1.0
    kernel = GaussianDataReverse(_forward("paper", 5), mean, variance, (1,))
    x0 = torch.tensor([[-1.0]], dtype=torch.float64)

    gap = _bound(kernel, x0) - gaussian_log_likelihood(x0, mean, variance)

    assert gap.item() > 0


def test_perturbed_kernel_lowers_average_bound():
    mean = torch.tensor([1.0, -2.0])
    variance = torch.tensor([0.5, 1.5])
    kernel = GaussianDataReverse(_forward("cosine", 8), mean, variance, (2,))
    x0 = mean + variance.sqrt() * torch.randn(4000, 2)

    exact = _bound(kernel, x0).mean()
    perturbed = _bound(_perturbed(kernel), x0).mean()

    assert perturbed < exact


def test_model_marginal_formula():
    mean, variance = 2.0, 0.5
    kernel = GaussianDataReverse(_forward("paper", 5), mean, variance, (1,))
    schedule = kernel.forward_process.schedule

    model_mean, model_variance = linear_chain_marginal(*_coefficients(kernel))

    # The exact chain is linear, so starting from (0, 1) instead of
    # (mu_T, s_T) shifts the result by the product A of the slopes.
    product = kernel.loc_coef.prod(0)
    loc_last = math.sqrt(schedule.alphas_bar[5]) * mean
    variance_last = schedule.alphas_bar[5] * variance + schedule.one_minus_alphas_bar[5]
    torch.testing.assert_close(model_mean, mean - product * loc_last)
    torch.testing.assert_close(model_variance, variance + product**2 * (1 - variance_last))


def test_long_chain_marginal_near_data():
    kernel = GaussianDataReverse(_forward("linear", 1000), 2.0, 0.5, (1,))

    model_mean, model_variance = linear_chain_marginal(*_coefficients(kernel))

    assert model_mean.item() == pytest.approx(2.0, abs=1e-3)
    assert model_variance.item() == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize(
    "x0, message",
    [
        (torch.zeros(0, 2), "N >= 1"),
        (torch.tensor(0.0), "N >= 1"),
        (torch.tensor([[0.0, float("nan")]]), "NaN"),
        (torch.zeros(3, 3), "broadcast"),
    ],
)
def test_closed_form_bad_data_raises(x0, message):
    kernel = GaussianDataReverse(_forward("paper", 3), 0.0, 1.0, (2,))

    with pytest.raises(ValueError, match=message):
        _bound(kernel, x0)
