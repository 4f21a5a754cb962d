import math

import pytest
import torch

from pyro_diffusion.exact import GaussianDataReverse, LinearGaussianReverse, closed_form_bound, gaussian_log_likelihood, linear_chain_marginal
from pyro_diffusion.forward import GaussianForward
from pyro_diffusion.likelihood import heldout_importance_log_likelihood, importance_log_likelihood
from pyro_diffusion.model import DiffusionModel
from pyro_diffusion.schedules import BetaSchedule

NUM_STEPS = 4


def perturbed_linear_model():
    """
    The exact reverse chain of N(0.5, 0.3) data with perturbed coefficients:
    a linear-Gaussian model whose bound is loose and whose marginal of x_0
    is known in closed form.
    """
    forward = GaussianForward(BetaSchedule.from_name("paper", NUM_STEPS, beta_1=0.05), event_dim=1)
    exact = GaussianDataReverse(forward, 0.5, 0.3, (1,))
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(3, NUM_STEPS, 1, generator=generator, dtype=torch.float64)
    loc_coef = exact.loc_coef * (1 + 0.1 * noise[0])
    loc_offset = exact.loc_offset + 0.1 * noise[1]
    log_variance = exact.log_variance + 0.3 * noise[2]
    reverse = LinearGaussianReverse(forward, loc_coef, loc_offset, log_variance, (1,))
    return DiffusionModel(forward, reverse), forward, (loc_coef, loc_offset, log_variance)


def test_one_sample_mean_equals_bound():
    diffusion, forward, coefficients = perturbed_linear_model()
    x0 = torch.full((20000, 1), 0.7)

    estimate = importance_log_likelihood(diffusion, x0, 1, torch.Generator().manual_seed(1))
    bound = closed_form_bound(forward, *coefficients, x0[:1].double())

    standard_error = float(estimate.std()) / math.sqrt(len(estimate))
    assert float(estimate.mean()) == pytest.approx(float(bound), abs=4 * standard_error)


def test_many_samples_approach_exact():
    diffusion, forward, coefficients = perturbed_linear_model()
    x0 = torch.tensor([[0.7], [-1.2], [2.0]])
    mean, variance = linear_chain_marginal(*coefficients)
    exact = gaussian_log_likelihood(x0.double(), mean, variance)
    bound = closed_form_bound(forward, *coefficients, x0.double())

    estimate = importance_log_likelihood(diffusion, x0, 20000, torch.Generator().manual_seed(2))

    torch.testing.assert_close(estimate.double(), exact, atol=0.02, rtol=0)
    assert (bound < exact - 0.05).all()


def test_mean_grows_with_samples():
    diffusion, forward, coefficients = perturbed_linear_model()
    x0 = torch.full((2000, 1), -1.2)
    generator = torch.Generator().manual_seed(3)

    means = [float(importance_log_likelihood(diffusion, x0, k, generator).mean()) for k in (1, 4, 32)]
    bound = float(closed_form_bound(forward, *coefficients, x0[:1].double()))

    assert means[0] < means[1] < means[2]
    assert means[2] >= bound


@pytest.mark.parametrize("num_samples", [0, -3, 2.5, True])
def test_bad_sample_count_raises(num_samples):
    diffusion, _, _ = perturbed_linear_model()

    with pytest.raises(ValueError, match="K must be an integer >= 1"):
        importance_log_likelihood(diffusion, torch.zeros(3, 1), num_samples)


def test_heldout_summary_in_bits():
    diffusion, _, _ = perturbed_linear_model()
    x0 = torch.randn(50, 1)

    summary = heldout_importance_log_likelihood(diffusion, x0, 8, batch_size=50, generator=torch.Generator().manual_seed(4))
    per_example = importance_log_likelihood(diffusion, x0, 8, torch.Generator().manual_seed(4))

    assert summary["num_samples"] == 8
    assert summary["log_likelihood_bits"] == pytest.approx(float(per_example.mean()) / math.log(2), rel=1e-6)
    assert summary["log_likelihood_bits_per_dim"] == summary["log_likelihood_bits"]
    assert summary["log_likelihood_bits_stderr"] > 0
