"""
Property tests across beta schedules, numbers of steps and event shapes:
composed forward kernels against the marginals, non-negative KL terms,
the bound against exact log-likelihoods, and the shapes and dtypes of
samples.
"""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pyro.distributions.kl import kl_divergence

from pyro_diffusion.binomial import BernoulliReverse, BinomialForward, binomial_betas
from pyro_diffusion.elbo import TimestepELBO
from pyro_diffusion.exact import (
    GaussianDataReverse,
    LinearGaussianReverse,
    closed_form_bound,
    gaussian_log_likelihood,
    linear_chain_marginal,
)
from pyro_diffusion.forward import GaussianForward
from pyro_diffusion.likelihood import bound_terms
from pyro_diffusion.model import DiffusionModel
from pyro_diffusion.nets import MLP
from pyro_diffusion.reverse import EpsilonReverse, PaperReverse
from pyro_diffusion.schedules import BetaSchedule, ScheduleKind
from pyro_diffusion.timesteps import UniformTimesteps

#: The named schedules and "random": betas drawn log-uniformly from [1e-5, 0.99].
SCHEDULES = [kind.value for kind in ScheduleKind] + ["random"]
EVENT_SHAPES = [(1,), (3,), (1, 4, 4), (3, 2, 2)]
GAUSSIAN_KERNELS = ["small", "large", "learned", "paper"]
SEEDS = st.integers(0, 2**31 - 1)


def _random_betas(num_steps, seed, low=1e-5, high=0.99):
    generator = torch.Generator().manual_seed(seed)
    uniform = torch.rand(num_steps, generator=generator, dtype=torch.float64)
    return torch.exp(math.log(low) + uniform * (math.log(high) - math.log(low)))


def _schedule(name, num_steps, seed):
    if name == "random":
        return BetaSchedule(_random_betas(num_steps, seed))
    return BetaSchedule.from_name(name, num_steps)


def _binomial_forward(name, num_steps, seed, event_dim):
    if name == "random":
        return BinomialForward(_random_betas(num_steps, seed, high=1.0), event_dim=event_dim)
    return BinomialForward(binomial_betas(num_steps), event_dim=event_dim)


def _random_mlp(event_shape, num_outputs, num_steps, seed, scale=0.5):
    """Build a small MLP whose zero-initialized readout is replaced by random weights of std ``scale``."""
    torch.manual_seed(seed)
    dim = math.prod(event_shape)
    net = MLP(dim, num_outputs * dim, num_steps, hidden_dim=8, num_blocks=1)
    torch.nn.init.normal_(net.output.weight, std=scale)
    torch.nn.init.normal_(net.output.bias, std=scale)
    return net


def _gaussian_model(forward, kernel, event_shape, seed):
    num_steps = forward.num_steps
    if kernel == "paper":
        reverse = PaperReverse(forward, _random_mlp(event_shape, 2, num_steps, seed), event_shape)
    else:
        num_outputs = 2 if kernel == "learned" else 1
        net = _random_mlp(event_shape, num_outputs, num_steps, seed)
        reverse = EpsilonReverse(forward, net, event_shape, kernel)
    return DiffusionModel(forward, reverse)


def _binomial_model(forward, prediction, event_shape, seed):
    net = _random_mlp(event_shape, 1, forward.num_steps, seed, scale=2.0)
    return DiffusionModel(forward, BernoulliReverse(forward, net, event_shape, prediction))


def _normal(shape, seed, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(shape, generator=generator, dtype=torch.float64)


def _binary(shape, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, shape, generator=generator).double()


# Composed one-step kernels against the marginals.


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(SCHEDULES),
    num_steps=st.integers(1, 200),
    event_shape=st.sampled_from(EVENT_SHAPES),
    seed=SEEDS,
)
def test_gaussian_steps_compose_to_marginal(name, num_steps, event_shape, seed):
    forward = GaussianForward(_schedule(name, num_steps, seed), event_dim=len(event_shape))
    x0 = _normal((2,) + event_shape, seed, scale=3.0)
    ones = torch.ones_like(x0)

    # Each kernel is N(a x_{t-1}, beta_t). The slope a is read at x_{t-1} = 1,
    # and the moments of the point mass at x0 are pushed through each kernel.
    mean, variance = x0.clone(), torch.zeros_like(x0)
    for t in range(1, num_steps + 1):
        kernel = forward.step(x0, t)
        slope = forward.step(ones, t).mean
        torch.testing.assert_close(kernel.mean, slope * x0, rtol=1e-12, atol=1e-12)
        mean = slope * mean
        variance = slope**2 * variance + kernel.variance

        marginal = forward.marginal(x0, t)
        assert marginal.batch_shape == (2,)
        assert marginal.event_shape == event_shape
        torch.testing.assert_close(marginal.mean, mean, rtol=1e-9, atol=1e-12, msg=f"mean at t = {t}")
        torch.testing.assert_close(marginal.variance, variance, rtol=1e-9, atol=1e-12, msg=f"variance at t = {t}")


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(SCHEDULES),
    num_steps=st.integers(2, 200),
    event_shape=st.sampled_from(EVENT_SHAPES),
    seed=SEEDS,
)
def test_gaussian_posterior_averages_to_previous_marginal(name, num_steps, event_shape, seed):
    # The guide's order q(x_T | x0) prod_t q(x_{t-1} | x_t, x0) is the same
    # joint as the forward kernels only if averaging each posterior over
    # q(x_t | x0) gives q(x_{t-1} | x0).
    forward = GaussianForward(_schedule(name, num_steps, seed), event_dim=len(event_shape))
    x0 = _normal((2,) + event_shape, seed, scale=3.0)
    zeros, ones = torch.zeros_like(x0), torch.ones_like(x0)

    for t in range(2, num_steps + 1):
        current = forward.marginal(x0, t)
        posterior = forward.posterior(current.mean, x0, t)
        # The posterior mean is linear in x_t, with the slope read at x_t = 1, x0 = 0.
        slope = forward.posterior(ones, zeros, t).mean
        mean = posterior.mean
        variance = slope**2 * current.variance + posterior.variance

        previous = forward.marginal(x0, t - 1)
        torch.testing.assert_close(mean, previous.mean, rtol=1e-9, atol=1e-12, msg=f"mean at t = {t}")
        torch.testing.assert_close(variance, previous.variance, rtol=1e-9, atol=1e-12, msg=f"variance at t = {t}")


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["binomial", "random"]),
    num_steps=st.integers(1, 200),
    event_shape=st.sampled_from(EVENT_SHAPES),
    seed=SEEDS,
)
def test_binomial_steps_compose_to_marginal(name, num_steps, event_shape, seed):
    forward = _binomial_forward(name, num_steps, seed, len(event_shape))
    x0 = _binary((2,) + event_shape, seed)
    zeros, ones = torch.zeros_like(x0), torch.ones_like(x0)

    # P(x_t = 1) = P(x_{t-1} = 1) k(1 | 1) + P(x_{t-1} = 0) k(1 | 0), with
    # both kernel probabilities read from the step distribution.
    probability = x0.clone()
    for t in range(1, num_steps + 1):
        keep_one = forward.step(ones, t).base_dist.probs
        flip_to_one = forward.step(zeros, t).base_dist.probs
        probability = probability * keep_one + (1 - probability) * flip_to_one

        marginal = forward.marginal(x0, t)
        assert marginal.batch_shape == (2,)
        assert marginal.event_shape == event_shape
        torch.testing.assert_close(marginal.base_dist.probs, probability, rtol=1e-9, atol=1e-12, msg=f"t = {t}")


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["binomial", "random"]),
    num_steps=st.integers(2, 200),
    event_shape=st.sampled_from(EVENT_SHAPES),
    seed=SEEDS,
)
def test_binomial_posterior_averages_to_previous_marginal(name, num_steps, event_shape, seed):
    forward = _binomial_forward(name, num_steps, seed, len(event_shape))
    x0 = _binary((2,) + event_shape, seed)
    zeros, ones = torch.zeros_like(x0), torch.ones_like(x0)

    for t in range(2, num_steps + 1):
        current = forward.marginal(x0, t).base_dist.probs
        given_one = forward.posterior(ones, x0, t).base_dist.probs
        given_zero = forward.posterior(zeros, x0, t).base_dist.probs
        averaged = current * given_one + (1 - current) * given_zero

        previous = forward.marginal(x0, t - 1).base_dist.probs
        torch.testing.assert_close(averaged, previous, rtol=1e-9, atol=1e-12, msg=f"t = {t}")


# Non-negative KL terms.

#: The allowance for float64 round-off in a KL divergence, in nats.
KL_ROUNDOFF = 1e-12


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(SCHEDULES),
    num_steps=st.integers(2, 40),
    event_shape=st.sampled_from(EVENT_SHAPES),
    kernel=st.sampled_from(GAUSSIAN_KERNELS),
    seed=SEEDS,
)
def test_gaussian_bound_kl_terms_nonnegative(name, num_steps, event_shape, kernel, seed):
    forward = GaussianForward(_schedule(name, num_steps, seed), event_dim=len(event_shape))
    model = _gaussian_model(forward, kernel, event_shape, seed).double()
    x0 = _normal((3,) + event_shape, seed, scale=2.0)

    terms = bound_terms(model, x0, torch.Generator().manual_seed(seed))

    assert terms.diffusion.shape == (3, num_steps - 1)
    assert (terms.prior >= -KL_ROUNDOFF).all()
    assert (terms.diffusion >= -KL_ROUNDOFF).all()


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(["binomial", "random"]),
    num_steps=st.integers(2, 40),
    event_shape=st.sampled_from(EVENT_SHAPES),
    prediction=st.sampled_from(["flip", "x0"]),
    seed=SEEDS,
)
def test_binomial_bound_kl_terms_nonnegative(name, num_steps, event_shape, prediction, seed):
    forward = _binomial_forward(name, num_steps, seed, len(event_shape))
    model = _binomial_model(forward, prediction, event_shape, seed).double()
    x0 = _binary((3,) + event_shape, seed)

    terms = bound_terms(model, x0, torch.Generator().manual_seed(seed))

    assert terms.diffusion.shape == (3, num_steps - 1)
    assert (terms.prior >= -KL_ROUNDOFF).all()
    assert (terms.diffusion >= -KL_ROUNDOFF).all()


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(SCHEDULES),
    num_steps=st.integers(2, 200),
    event_shape=st.sampled_from(EVENT_SHAPES),
    kernel=st.sampled_from(GAUSSIAN_KERNELS),
    seed=SEEDS,
)
def test_posterior_to_kernel_kl_matches_formula(name, num_steps, event_shape, kernel, seed):
    # The states x_t and x0 are arbitrary, not draws from the forward
    # process, because the KL divergence of two Gaussians is non-negative
    # for any pair.
    forward = GaussianForward(_schedule(name, num_steps, seed), event_dim=len(event_shape))
    model = _gaussian_model(forward, kernel, event_shape, seed).double()
    generator = torch.Generator().manual_seed(seed)
    t = torch.randint(2, num_steps + 1, (6,), generator=generator)
    x0 = _normal((6,) + event_shape, seed, scale=3.0)
    x_t = _normal((6,) + event_shape, seed + 1, scale=3.0)

    with torch.no_grad():
        posterior = forward.posterior(x_t, x0, t)
        reverse = model.reverse.distribution(x_t, t)
        kl = kl_divergence(posterior, reverse)
        loc, log_variance = model.reverse.loc_log_variance(x_t, t)

    # KL(q || p) of diagonal Gaussians, in this direction, summed over the event.
    posterior_mean, posterior_variance = forward.posterior_mean_variance(x_t, x0, t)
    ratio = posterior_variance / log_variance.exp()
    per_element = 0.5 * (ratio - 1 - ratio.log() + (posterior_mean - loc) ** 2 / log_variance.exp())
    expected = per_element.expand((6,) + event_shape).reshape(6, -1).sum(-1)
    assert kl.shape == (6,)
    assert (kl >= -KL_ROUNDOFF).all()
    torch.testing.assert_close(kl, expected, rtol=1e-9, atol=1e-9)


class RecordingTimesteps(UniformTimesteps):
    """The uniform proposal, recording the per-example terms that ``TimestepELBO`` reports."""

    def __init__(self):
        self.terms = []

    def update(self, t, terms):
        self.terms.append(terms.detach().clone())


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(SCHEDULES),
    num_steps=st.integers(2, 200),
    event_shape=st.sampled_from(EVENT_SHAPES),
    kernel=st.sampled_from(GAUSSIAN_KERNELS + ["binomial-flip", "binomial-x0"]),
    seed=SEEDS,
)
def test_timestep_elbo_step_kl_nonnegative(name, num_steps, event_shape, kernel, seed):
    # A one-sample estimate log q - log p in place of the analytic KL can
    # be negative, so this fails if the step site falls back to it.
    if kernel.startswith("binomial"):
        forward = _binomial_forward("random" if name == "random" else "binomial", num_steps, seed, len(event_shape))
        model = _binomial_model(forward, kernel.split("-")[1], event_shape, seed).double()
        x0 = _binary((8,) + event_shape, seed)
    else:
        forward = GaussianForward(_schedule(name, num_steps, seed), event_dim=len(event_shape))
        model = _gaussian_model(forward, kernel, event_shape, seed).double()
        x0 = _normal((8,) + event_shape, seed, scale=2.0)
    sampler = RecordingTimesteps()

    with torch.no_grad():
        TimestepELBO(sampler=sampler, generator=torch.Generator().manual_seed(seed)).elbo_per_example(
            model.model, model.guide, x0
        )

    assert len(sampler.terms) == 1
    assert sampler.terms[0].shape == (8,)
    assert (sampler.terms[0] >= -KL_ROUNDOFF).all()


# The bound against exact log-likelihoods.


def _random_linear_coefficients(num_steps, event_shape, seed):
    """
    Draw the coefficients of a linear-Gaussian reverse kernel: slopes in
    ``[-1.05, 1.05]``, so that the chain's variance stays finite for 200
    steps, offsets from ``N(0, 1)`` and log-variances in ``[-8, 1]``.
    """
    generator = torch.Generator().manual_seed(seed)
    shape = (num_steps,) + event_shape
    loc_coef = 2.1 * torch.rand(shape, generator=generator, dtype=torch.float64) - 1.05
    loc_offset = torch.randn(shape, generator=generator, dtype=torch.float64)
    log_variance = 9.0 * torch.rand(shape, generator=generator, dtype=torch.float64) - 8.0
    return loc_coef, loc_offset, log_variance


def _roundoff(value):
    """Allowance for float64 round-off in a log-density of magnitude ``value``, in nats."""
    return 1e-9 * (1.0 + value.abs())


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(SCHEDULES),
    num_steps=st.integers(1, 200),
    event_shape=st.sampled_from(EVENT_SHAPES),
    seed=SEEDS,
)
def test_random_linear_kernel_bound_below_likelihood(name, num_steps, event_shape, seed):
    forward = GaussianForward(_schedule(name, num_steps, seed), event_dim=len(event_shape))
    coefficients = _random_linear_coefficients(num_steps, event_shape, seed)
    x0 = _normal((5,) + event_shape, seed + 1, scale=3.0)

    bound = closed_form_bound(forward, *coefficients, x0)

    model_mean, model_variance = linear_chain_marginal(*coefficients)
    log_likelihood = gaussian_log_likelihood(x0, model_mean, model_variance)
    assert torch.isfinite(bound).all()
    assert (bound <= log_likelihood + _roundoff(log_likelihood)).all(), (bound, log_likelihood)


@settings(max_examples=20, deadline=None)
@given(
    name=st.sampled_from(SCHEDULES),
    num_steps=st.integers(2, 40),
    event_shape=st.sampled_from([(1,), (3,), (1, 2, 2)]),
    seed=SEEDS,
)
def test_random_linear_kernel_estimator_below_likelihood(name, num_steps, event_shape, seed):
    # bound_terms estimates the same bound with one forward sample per step.
    # Its mean over many copies of one example must match the closed form,
    # which must not exceed log p(x0).
    forward = GaussianForward(_schedule(name, num_steps, seed), event_dim=len(event_shape))
    coefficients = _random_linear_coefficients(num_steps, event_shape, seed)
    model = DiffusionModel(forward, LinearGaussianReverse(forward, *coefficients, event_shape))
    x0 = _normal((1,) + event_shape, seed + 1).float()
    num_copies = 400

    terms = bound_terms(model, x0.expand((num_copies,) + event_shape), torch.Generator().manual_seed(seed))

    estimate = terms.elbo().double()
    exact = closed_form_bound(forward, *coefficients, x0)
    model_mean, model_variance = linear_chain_marginal(*coefficients)
    log_likelihood = gaussian_log_likelihood(x0, model_mean, model_variance)
    stderr = estimate.std() / math.sqrt(num_copies)
    assert exact.item() <= log_likelihood.item() + _roundoff(log_likelihood).item()
    assert abs(estimate.mean().item() - exact.item()) <= 5 * stderr.item() + 1e-3 * (1 + abs(exact.item()))


def _expected_under_data(function, mean, variance, event_shape):
    """
    Compute E f(x0) over x0 ~ N(mean, variance) independently in each
    element, for f a sum over elements of one quadratic q(x): f at the
    constant inputs -1, 0, 1 gives D q(-1), D q(0), D q(1).
    """
    values = [function(torch.full((1,) + event_shape, u, dtype=torch.float64)).item() for u in (-1.0, 0.0, 1.0)]
    square = (values[0] + values[2]) / 2 - values[1]
    linear = (values[2] - values[0]) / 2
    return square * (mean**2 + variance) + linear * mean + values[1]


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(SCHEDULES),
    num_steps=st.integers(1, 200),
    event_shape=st.sampled_from(EVENT_SHAPES),
    mean=st.floats(-4, 4),
    variance=st.floats(0.05, 5),
    seed=SEEDS,
)
def test_exact_reverse_bound_below_data_likelihood(name, num_steps, event_shape, mean, variance, seed):
    forward = GaussianForward(_schedule(name, num_steps, seed), event_dim=len(event_shape))
    kernel = GaussianDataReverse(forward, mean, variance, event_shape)
    coefficients = (kernel.loc_coef, kernel.loc_offset, kernel.log_variance)
    dim = math.prod(event_shape)

    def bound(x0):
        return closed_form_bound(forward, *coefficients, x0)

    # 1. Per example, the bound is below the log-likelihood of the model,
    # whose chain starts from N(0, I) rather than q(x_T).
    x0 = mean + math.sqrt(variance) * _normal((5,) + event_shape, seed, scale=2.0)
    model_mean, model_variance = linear_chain_marginal(*coefficients)
    log_likelihood = gaussian_log_likelihood(x0, model_mean, model_variance)
    assert (bound(x0) <= log_likelihood + _roundoff(log_likelihood)).all()

    # 2. Averaged over the data, the bound is the data's expected
    # log-likelihood less KL(q(x_T) || N(0, I)), so it is close to that
    # value and never above it.
    expected_bound = _expected_under_data(bound, mean, variance, event_shape)
    expected_log_likelihood = -0.5 * dim * (math.log(2 * math.pi * variance) + 1)
    loc_last = kernel.marginal_loc[-1].flatten()[0].item()
    variance_last = kernel.marginal_variance[-1].flatten()[0].item()
    prior_kl = 0.5 * dim * (variance_last + loc_last**2 - 1 - math.log(variance_last))
    tolerance = 1e-8 * (1 + abs(expected_log_likelihood) + prior_kl)
    assert expected_bound <= expected_log_likelihood + tolerance
    assert abs(expected_bound - (expected_log_likelihood - prior_kl)) <= tolerance


# Samples: shape and dtype.


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(SCHEDULES),
    num_steps=st.integers(1, 30),
    event_shape=st.sampled_from(EVENT_SHAPES),
    kernel=st.sampled_from(GAUSSIAN_KERNELS + ["binomial-flip", "binomial-x0"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    num_samples=st.integers(1, 5),
    seed=SEEDS,
)
def test_samples_shape_and_dtype(name, num_steps, event_shape, kernel, dtype, num_samples, seed):
    binomial = kernel.startswith("binomial")
    if binomial:
        forward = _binomial_forward("random" if name == "random" else "binomial", num_steps, seed, len(event_shape))
        model = _binomial_model(forward, kernel.split("-")[1], event_shape, seed)
    else:
        forward = GaussianForward(_schedule(name, num_steps, seed), event_dim=len(event_shape))
        model = _gaussian_model(forward, kernel, event_shape, seed)
    model = model.to(dtype)
    expected_shape = (num_samples,) + event_shape

    samples = model.sample(num_samples, generator=torch.Generator().manual_seed(seed))
    steps = list(model.sample_steps(num_samples, generator=torch.Generator().manual_seed(seed)))

    assert samples.shape == expected_shape
    assert samples.dtype == dtype
    assert torch.isfinite(samples).all()
    assert [t for t, _ in steps] == list(range(num_steps, -1, -1))
    for t, x in steps:
        assert x.shape == expected_shape, f"t = {t}"
        assert x.dtype == dtype, f"t = {t}"
        assert torch.isfinite(x).all(), f"t = {t}"
    torch.testing.assert_close(steps[-1][1], samples, rtol=0, atol=0)
    if binomial:
        for t, x in steps:
            assert ((x == 0) | (x == 1)).all(), f"t = {t}"
