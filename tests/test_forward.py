import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_diffusion.forward import GaussianForward
from pyro_diffusion.schedules import BetaSchedule

KINDS = ["paper", "linear", "cosine"]


def _forward(kind, num_steps, event_dim=1):
    return GaussianForward(BetaSchedule.from_name(kind, num_steps), event_dim=event_dim)


@st.composite
def _schedule_and_step(draw, min_step=1):
    kind = draw(st.sampled_from(KINDS))
    num_steps = draw(st.integers(min_value=max(1, min_step), max_value=50))
    t = draw(st.integers(min_value=min_step, max_value=num_steps))
    return kind, num_steps, t


def _propagate_steps(forward, x0, t):
    """
    Push the moments of a point mass at ``x0`` through the one-step kernels
    ``q(x_s | x_{s-1})`` for ``s = 1..t``. Each kernel is linear Gaussian,
    so its mean map is read off at 1 and its variance from the kernel.
    """
    mean = x0.clone()
    variance = torch.zeros_like(x0)
    for s in range(1, t + 1):
        kernel = forward.step(torch.ones_like(x0), s)
        coef = kernel.mean
        mean = coef * mean
        variance = coef**2 * variance + kernel.variance
    return mean, variance


@settings(max_examples=40, deadline=None)
@given(case=_schedule_and_step(), values=st.lists(st.floats(-3, 3), min_size=3, max_size=3))
def test_steps_compose_to_marginal(case, values):
    kind, num_steps, t = case
    forward = _forward(kind, num_steps)
    x0 = torch.tensor([values], dtype=torch.float64)

    mean, variance = _propagate_steps(forward, x0, t)

    marginal = forward.marginal(x0, t)
    torch.testing.assert_close(mean, marginal.mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(variance, marginal.variance, rtol=1e-10, atol=1e-12)


def test_sampled_steps_match_marginal():
    forward = _forward("cosine", 20)
    num_samples, t = 40000, 12
    x0 = torch.tensor([1.5, -0.5], dtype=torch.float64)
    x = x0.expand(num_samples, 2)

    for s in range(1, t + 1):
        x = forward.step(x, s).sample()

    marginal = forward.marginal(x0.unsqueeze(0), t)
    mean, variance = marginal.mean[0], marginal.variance[0]
    mean_stderr = (variance / num_samples).sqrt()
    variance_stderr = variance * math.sqrt(2.0 / (num_samples - 1))
    assert ((x.mean(0) - mean).abs() < 4 * mean_stderr).all()
    assert ((x.var(0) - variance).abs() < 4 * variance_stderr).all()


def test_marginal_vectorized_over_steps():
    forward = _forward("linear", 30)
    x0 = torch.randn(5, 3, dtype=torch.float64)
    t = torch.tensor([1, 7, 30, 2, 15])

    batched = forward.marginal(x0, t)

    assert batched.batch_shape == (5,)
    assert batched.event_shape == (3,)
    for i in range(5):
        single = forward.marginal(x0[i : i + 1], int(t[i]))
        torch.testing.assert_close(batched.mean[i], single.mean[0])
        torch.testing.assert_close(batched.variance[i], single.variance[0])


def test_posterior_vectorized_over_steps():
    forward = _forward("paper", 10)
    x0 = torch.randn(4, 2, dtype=torch.float64)
    x_t = torch.randn(4, 2, dtype=torch.float64)
    t = torch.tensor([2, 10, 5, 3])

    batched = forward.posterior(x_t, x0, t)

    for i in range(4):
        single = forward.posterior(x_t[i : i + 1], x0[i : i + 1], int(t[i]))
        torch.testing.assert_close(batched.mean[i], single.mean[0])
        torch.testing.assert_close(batched.variance[i], single.variance[0])


def test_q_sample_vectorized_over_steps():
    forward = _forward("cosine", 25)
    x0 = torch.randn(6, 2, 2, dtype=torch.float64)
    noise = torch.randn(6, 2, 2, dtype=torch.float64)
    t = torch.tensor([1, 25, 3, 9, 9, 14])
    forward.event_dim = 2

    x_t = forward.q_sample(x0, t, noise)

    marginal = forward.marginal(x0, t)
    expected = marginal.mean + marginal.variance.sqrt() * noise
    torch.testing.assert_close(x_t, expected)


def test_image_shaped_events_sum_log_prob():
    forward = _forward("paper", 5, event_dim=3)
    x0 = torch.randn(2, 1, 3, 3)

    marginal = forward.marginal(x0, 4)

    assert marginal.batch_shape == (2,)
    assert marginal.event_shape == (1, 3, 3)
    assert marginal.log_prob(x0).shape == (2,)


def _log_normal(x, mean, variance):
    return -0.5 * (math.log(2 * math.pi) + torch.log(variance) + (x - mean) ** 2 / variance)


@settings(max_examples=30, deadline=None)
@given(
    case=_schedule_and_step(min_step=2),
    x0=st.floats(-3, 3),
    noise=st.floats(-3, 3),
)
def test_posterior_matches_bayes_on_grid(case, x0, noise):
    kind, num_steps, t = case
    forward = _forward(kind, num_steps)
    schedule = forward.schedule
    x0 = torch.tensor([[x0]], dtype=torch.float64)
    x_t = forward.q_sample(x0, t, torch.tensor([[noise]], dtype=torch.float64))

    # q(x_{t-1} | x0) is the prior of Bayes' rule. The grid spans 12 of its
    # standard deviations on each side of its mean.
    prior_mean = float(schedule.sqrt_alphas_bar[t - 1] * x0)
    prior_variance = schedule.one_minus_alphas_bar[t - 1]
    half_width = 12 * float(prior_variance.sqrt())
    grid = torch.linspace(prior_mean - half_width, prior_mean + half_width, 100001, dtype=torch.float64)
    log_prior = _log_normal(grid, prior_mean, prior_variance)
    log_likelihood = _log_normal(x_t[0, 0], schedule.sqrt_alphas[t] * grid, schedule.betas[t])
    weights = torch.softmax(log_prior + log_likelihood, 0)
    grid_mean = (weights * grid).sum()
    grid_variance = (weights * (grid - grid_mean) ** 2).sum()

    posterior = forward.posterior(x_t, x0, t)
    assert posterior.mean[0, 0].item() == pytest.approx(grid_mean.item(), rel=1e-6, abs=1e-8)
    assert posterior.variance[0, 0].item() == pytest.approx(grid_variance.item(), rel=1e-5)


@pytest.mark.parametrize(
    "method, t",
    [
        ("marginal", 0),
        ("marginal", 11),
        ("marginal", -1),
        ("step", 0),
        ("step", 11),
        ("q_sample", 12),
        ("posterior", 1),
        ("posterior", 0),
        ("posterior", 11),
    ],
)
def test_step_out_of_range_raises(method, t):
    forward = _forward("paper", 10)
    x = torch.zeros(2, 3)
    args = {
        "marginal": (x, t),
        "step": (x, t),
        "q_sample": (x, t),
        "posterior": (x, x, t),
    }[method]

    with pytest.raises(ValueError, match=f"t = {t} is outside"):
        getattr(forward, method)(*args)


def test_out_of_range_in_batch_raises():
    forward = _forward("paper", 10)
    x = torch.zeros(3, 2)

    with pytest.raises(ValueError, match="t = 12"):
        forward.marginal(x, torch.tensor([3, 12, 4]))


def test_float_step_raises():
    forward = _forward("paper", 10)
    x = torch.zeros(3, 2)

    with pytest.raises(ValueError, match="integers"):
        forward.marginal(x, torch.tensor([1.0, 2.0, 3.0]))


@settings(max_examples=20, deadline=None)
@given(case=_schedule_and_step())
def test_marginal_variance_in_unit_interval(case):
    kind, num_steps, t = case
    forward = _forward(kind, num_steps)
    x0 = torch.zeros(1, 1, dtype=torch.float64)

    variance = forward.marginal(x0, t).variance

    assert (variance > 0).all()
    assert (variance <= 1).all()
