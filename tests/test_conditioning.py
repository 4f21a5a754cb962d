import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.contrib.autoname import scope
from pyro.infer import EmpiricalMarginal, Importance

from pyro_diffusion.conditioning import (
    Observation,
    condition,
    denoise_from_start_level,
    denoising_start_level,
    product_sample,
    smc_sample,
)
from pyro_diffusion.exact import GaussianDataReverse, linear_chain_marginal
from pyro_diffusion.forward import GaussianForward
from pyro_diffusion.model import DiffusionModel
from pyro_diffusion.nets import MLP
from pyro_diffusion.reverse import EpsilonReverse
from pyro_diffusion.schedules import BetaSchedule

MEAN = torch.tensor([1.0, -0.5, 0.3])
VARIANCE = torch.tensor([0.5, 0.2, 1.5])
Y = torch.tensor([[0.2, 0.9, -1.0]])


def _exact_model(num_steps=10):
    forward = GaussianForward(BetaSchedule.from_name("paper", num_steps, beta_1=0.02))
    return DiffusionModel(forward, GaussianDataReverse(forward, MEAN, VARIANCE, (3,)))


def _model_marginal(diffusion):
    reverse = diffusion.reverse
    mean, variance = linear_chain_marginal(reverse.loc_coef, reverse.loc_offset, reverse.log_variance)
    return mean.float(), variance.float()


def _network_model(num_steps=8, seed=0):
    torch.manual_seed(seed)
    forward = GaussianForward(BetaSchedule.from_name("paper", num_steps))
    net = MLP(3, 6, num_steps, hidden_dim=16, num_blocks=1)
    torch.nn.init.normal_(net.output.weight, std=0.3)
    return DiffusionModel(forward, EpsilonReverse(forward, net, (3,), "learned"))


def _weighted_moments(result):
    weights = result.log_weights.exp().unsqueeze(-1)
    mean = (weights * result.particles).sum(1)
    variance = (weights * (result.particles - mean.unsqueeze(1)) ** 2).sum(1)
    return mean, variance


def _smc_moments(diffusion, observation, num_particles, num_runs, seed=0):
    """Run ``num_runs`` independent SMC samplers and return each run's weighted moments."""
    repeated = Observation(
        observation.values.expand(num_runs, -1), observation.mask.expand(num_runs, -1), observation.noise_scale
    )
    result = smc_sample(diffusion, repeated, num_particles, generator=torch.Generator().manual_seed(seed))
    return _weighted_moments(result) + (result,)


def test_smc_denoising_matches_exact_posterior():
    diffusion = _exact_model()
    sigma = 0.5
    mean, variance = _model_marginal(diffusion)
    exact_variance = 1 / (1 / variance + 1 / sigma**2)
    exact_mean = exact_variance * (mean / variance + Y / sigma**2)

    run_means, run_variances, _ = _smc_moments(diffusion, Observation(Y, noise_scale=sigma), 400, 100)

    stderr = run_means.std(0) / math.sqrt(len(run_means))
    assert ((run_means.mean(0) - exact_mean[0]).abs() < 4 * stderr + 0.01).all()
    assert ((run_variances.mean(0) - exact_variance).abs() < 0.1 * exact_variance).all()


def test_smc_error_shrinks_with_particles():
    diffusion = _exact_model()
    sigma = 0.3
    mean, variance = _model_marginal(diffusion)
    exact_variance = 1 / (1 / variance + 1 / sigma**2)
    exact_mean = exact_variance * (mean / variance + Y / sigma**2)

    errors = []
    for num_particles in (4, 400):
        run_means, _, _ = _smc_moments(diffusion, Observation(Y, noise_scale=sigma), num_particles, 60, seed=1)
        errors.append(float(((run_means - exact_mean) ** 2).sum(-1).mean()))

    assert errors[1] < errors[0] / 10


def test_smc_evidence_unbiased():
    diffusion = _exact_model()
    sigma = 0.5
    mean, variance = _model_marginal(diffusion)
    total = variance + sigma**2
    exact = float((-0.5 * (math.log(2 * math.pi) + total.log() + (Y - mean) ** 2 / total)).sum())

    _, _, result = _smc_moments(diffusion, Observation(Y, noise_scale=sigma), 200, 100, seed=2)

    ratios = (result.log_marginal_likelihood - exact).exp()
    assert abs(float(ratios.mean()) - 1) < 4 * float(ratios.std()) / 10 + 0.02


def test_smc_inpainting_keeps_known_and_matches_marginal():
    diffusion = _exact_model()
    mask = torch.tensor([[True, False, True]])
    mean, variance = _model_marginal(diffusion)

    run_means, run_variances, result = _smc_moments(diffusion, Observation(Y, mask), 300, 60, seed=3)

    assert torch.equal(result.particles[..., 0], Y[0, 0].expand_as(result.particles[..., 0]))
    assert torch.equal(result.particles[..., 2], Y[0, 2].expand_as(result.particles[..., 2]))
    # The model's coordinates are independent, so the unobserved one keeps its marginal.
    stderr = float(run_means[:, 1].std()) / math.sqrt(len(run_means))
    assert abs(float(run_means[:, 1].mean()) - float(mean[1])) < 4 * stderr + 0.01
    assert abs(float(run_variances[:, 1].mean()) - float(variance[1])) < 0.1 * float(variance[1])
    exact_log_density = -0.5 * (math.log(2 * math.pi) + variance.log() + (Y - mean) ** 2 / variance)
    ratios = (result.log_marginal_likelihood - exact_log_density[mask].sum()).exp()
    assert abs(float(ratios.mean()) - 1) < 0.1


@pytest.mark.parametrize("sampler", ["product", "smc"])
def test_all_observed_returns_data(sampler):
    diffusion = _network_model()
    values = torch.randn(4, 3)
    observation = Observation(values)

    if sampler == "product":
        samples = product_sample(diffusion, observation, torch.Generator().manual_seed(0))
    else:
        samples = smc_sample(diffusion, observation, 5, torch.Generator().manual_seed(0)).particles[:, 0]

    assert torch.equal(samples, values)


@pytest.mark.parametrize("sampler", ["product", "smc"])
@pytest.mark.parametrize("sigma", [0.0, 0.4])
def test_none_observed_is_unconditional(sampler, sigma):
    diffusion = _network_model()
    observation = Observation(torch.randn(5, 3), torch.zeros(5, 3, dtype=torch.bool), sigma)

    if sampler == "product":
        samples = product_sample(diffusion, observation, torch.Generator().manual_seed(7))
    else:
        samples = smc_sample(diffusion, observation, 1, torch.Generator().manual_seed(7)).particles[:, 0]

    expected = diffusion.sample(5, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(samples, expected)


def test_product_known_coordinates_never_drift():
    diffusion = _network_model()
    values = torch.randn(50, 3)
    mask = torch.rand(50, 3) < 0.5

    samples = product_sample(diffusion, Observation(values, mask), torch.Generator().manual_seed(0))

    assert torch.equal(samples[mask], values[mask])
    assert not torch.equal(samples[~mask], values[~mask])


def test_product_denoising_is_biased_but_close():
    # The per-step product is a heuristic: its spread differs from the exact
    # posterior's even when every reverse kernel is exact.
    diffusion = _exact_model()
    sigma = 0.5
    mean, variance = _model_marginal(diffusion)
    exact_variance = 1 / (1 / variance + 1 / sigma**2)
    observation = Observation(Y.expand(20000, 3), noise_scale=sigma)

    samples = product_sample(diffusion, observation, torch.Generator().manual_seed(0))

    relative = samples.var(0) / exact_variance
    assert (relative > 0.5).all()
    assert (relative < 1.5).all()
    assert ((relative - 1).abs() > 0.05).any()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Observation(torch.zeros(2, 3), torch.ones(3, 3, dtype=torch.bool)), "broadcast"),
        (lambda: Observation(torch.zeros(2, 3), torch.ones(2, 3)), "boolean"),
        (lambda: Observation(torch.zeros(2, 3), noise_scale=-0.1), "-0.1"),
        (lambda: Observation(torch.full((2, 3), float("nan"))), "NaN"),
        (lambda: smc_sample(_network_model(), Observation(torch.zeros(2, 3)), 0), "num_particles"),
        (lambda: denoising_start_level(BetaSchedule.from_name("paper", 10), 0.0), "noise_scale = 0.0"),
        (lambda: product_sample(_network_model(), Observation(torch.zeros(2, 4))), "shape"),
    ],
)
def test_bad_input_raises(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("sigma", [0.05, 0.3, 1.0, 3.0])
def test_denoising_start_level_matches_noise(sigma):
    schedule = BetaSchedule.from_name("paper", 200)
    alphas_bar = schedule.alphas_bar[1:]

    t_star, alpha_bar = denoising_start_level(schedule, sigma)

    ratios = (1 - alphas_bar) / alphas_bar
    distances = (ratios.log() - math.log(sigma**2)).abs()
    assert distances[t_star - 1] == distances.min()
    assert alpha_bar == pytest.approx(float(alphas_bar[t_star - 1]))


def test_masked_model_sites_and_log_density():
    diffusion = _exact_model(4)
    x0 = torch.tensor([[0.3, float("nan"), -1.0]])
    mask = torch.tensor([[True, False, True]])

    trace = poutine.trace(diffusion.model).get_trace(x0, obs_mask=mask)
    trace.compute_log_prob()

    observed = trace.nodes["x_0"]
    assert observed["is_observed"]
    missing = trace.nodes["x_0_unobserved"]
    assert not missing["is_observed"]
    decoder = diffusion.decoder_distribution(trace.nodes["x_1"]["value"]).base_dist
    expected = decoder.log_prob(torch.tensor([[0.3, 0.0, -1.0]]))[mask].sum()
    torch.testing.assert_close(observed["log_prob"].sum(), expected)
    assert trace.nodes["_RETURN"]["value"][0, 0] == 0.3


def test_importance_on_masked_model_matches_marginal():
    # Importance sampling with the model as its own proposal targets the
    # posterior of the unobserved coordinate given the observed ones.
    pyro.set_rng_seed(0)
    diffusion = _exact_model(3)
    mean, variance = _model_marginal(diffusion)
    x0 = torch.tensor([[0.3, 0.0, -1.0]])
    mask = torch.tensor([[True, False, True]])

    posterior = Importance(diffusion.model, guide=None, num_samples=3000).run(x0, obs_mask=mask)
    marginal = EmpiricalMarginal(posterior, sites="x_0_unobserved")
    draws = marginal.sample((2000,))[..., 0, 1]

    assert abs(float(draws.mean()) - float(mean[1])) < 0.1


def test_condition_rejects_unknown_site():
    diffusion = _exact_model(3)

    with pytest.raises(ValueError, match="x_5"):
        condition(diffusion.model, {"x_5": torch.zeros(1, 3)}, num_samples=1)


def test_condition_fixes_known_site():
    diffusion = _exact_model(3)
    value = torch.full((1, 3), 0.7)

    conditioned = condition(diffusion.model, {"x_2": value}, num_samples=1)
    trace = poutine.trace(conditioned).get_trace(num_samples=1)

    assert torch.equal(trace.nodes["x_2"]["value"], value)
    assert trace.nodes["x_2"]["is_observed"]


def test_model_as_prior_in_larger_model():
    # A noise level with its own prior, inferred jointly with x_0 from noisy
    # observations; the diffusion model's sites live under the scope "prior".
    diffusion = _exact_model(3)
    true_scale = 0.3
    torch.manual_seed(0)
    x0 = diffusion.sample(1)
    y = x0 + true_scale * torch.randn(40, 3)

    def joint(y):
        scale = pyro.sample("noise_scale", dist.LogNormal(math.log(0.5), 1.0))
        with scope(prefix="prior"):
            x = diffusion.model(num_samples=1)
        with pyro.plate("observations", len(y)):
            pyro.sample("y", dist.Normal(x, scale).to_event(1), obs=y)
        return scale

    pyro.set_rng_seed(1)
    posterior = Importance(joint, guide=None, num_samples=4000).run(y)
    scale = EmpiricalMarginal(posterior, sites="noise_scale").sample((2000,))
    trace = poutine.trace(joint).get_trace(y)

    assert "prior/x_0" in trace.nodes
    assert abs(float(scale.mean()) - true_scale) < 0.1


def test_start_level_denoising_of_standard_data():
    # For data N(0, I), x_0 given x_t is N(sqrt(alpha_bar) x_t, 1 - alpha_bar),
    # which the exact reverse chain started at x_t = sqrt(alpha_bar) y reproduces.
    forward = GaussianForward(BetaSchedule.from_name("paper", 50))
    diffusion = DiffusionModel(forward, GaussianDataReverse(forward, 0.0, 1.0, (3,)))
    sigma = 0.5
    _, alpha_bar = denoising_start_level(forward.schedule, sigma)
    noisy = torch.tensor([[1.0, -2.0, 0.5]]).expand(20000, 3)

    samples = denoise_from_start_level(diffusion, noisy, sigma, torch.Generator().manual_seed(0))

    start = math.sqrt(alpha_bar) * noisy[0]
    torch.testing.assert_close(samples.mean(0), math.sqrt(alpha_bar) * start, atol=0.03, rtol=0)
    torch.testing.assert_close(samples.var(0), torch.full((3,), 1 - alpha_bar), atol=0.03, rtol=0)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Observation(torch.zeros(2, 3), noise_scale=1e-20), "pass 0"),
        (lambda: Observation(torch.zeros(0, 3)), "no examples"),
    ],
)
def test_degenerate_observation_raises(make, message):
    with pytest.raises(ValueError, match=message):
        make()
