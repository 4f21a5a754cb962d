import math

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

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
from pyro_diffusion.schedules import BetaSchedule
from pyro_diffusion.timesteps import ImportanceTimesteps

DATA_DIM = 2
MEAN = torch.tensor([2.0, -1.0])
VARIANCE = torch.tensor([0.5, 1.5])


def _forward(num_steps, kind="paper"):
    return GaussianForward(BetaSchedule.from_name(kind, num_steps))


def _exact_model(num_steps=5, kind="paper"):
    forward = _forward(num_steps, kind)
    return DiffusionModel(forward, GaussianDataReverse(forward, MEAN, VARIANCE, (DATA_DIM,)))


def _perturbed_model(num_steps=5, kind="paper"):
    exact = _exact_model(num_steps, kind).reverse
    reverse = LinearGaussianReverse(
        exact.forward_process,
        exact.loc_coef * 1.1,
        exact.loc_offset + 0.2,
        exact.log_variance + 0.3,
        (DATA_DIM,),
    )
    return DiffusionModel(exact.forward_process, reverse)


def _random_net(num_steps, seed):
    torch.manual_seed(seed)
    net = MLP(DATA_DIM, 2 * DATA_DIM, num_steps, hidden_dim=16, num_blocks=1)
    torch.nn.init.normal_(net.output.weight, std=0.3)
    torch.nn.init.normal_(net.output.bias, std=0.3)
    return net


def _mlp_model(kernel, num_steps=6, seed=0):
    forward = _forward(num_steps)
    net = _random_net(num_steps, seed)
    if kernel == "epsilon":
        reverse = EpsilonReverse(forward, net, (DATA_DIM,), "learned")
    else:
        reverse = PaperReverse(forward, net, (DATA_DIM,))
    return DiffusionModel(forward, reverse)


def _closed_form(model, x0):
    reverse = model.reverse
    return closed_form_bound(
        model.forward_process, reverse.loc_coef, reverse.loc_offset, reverse.log_variance, x0
    )


def _trace_elbo_estimate(model, x0, num_particles=200, num_repeats=30):
    """
    Run stock ``Trace_ELBO`` ``num_repeats`` times, each averaging
    ``num_particles`` vectorized particles of the ELBO summed over examples.

    :returns: ``(mean, stderr)`` of the summed ELBO over the repeats.
    """
    elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        draws = torch.tensor([-elbo.loss(model.model, model.guide, x0) for _ in range(num_repeats)])
    return draws.mean().item(), draws.std().item() / math.sqrt(num_repeats)


def _timestep_estimate(model, x0, num_copies=2000, elbo=None):
    """
    Draw ``num_copies`` independent one-step estimates of the ELBO summed
    over the examples of ``x0``, by evaluating ``x0`` repeated.

    :returns: ``(mean, stderr)`` of the summed ELBO.
    """
    elbo = elbo if elbo is not None else TimestepELBO()
    repeated = x0.repeat(num_copies, 1)
    with torch.no_grad():
        per_example = elbo.elbo_per_example(model.model, model.guide, repeated)
    draws = per_example.reshape(num_copies, x0.shape[0]).sum(-1)
    return draws.mean().item(), draws.std().item() / math.sqrt(num_copies)


@pytest.mark.parametrize("kind", ["paper", "cosine"])
@pytest.mark.parametrize("build", [_exact_model, _perturbed_model], ids=["exact", "perturbed"])
def test_trace_elbo_matches_closed_form(build, kind):
    model = build(5, kind)
    x0 = MEAN + VARIANCE.sqrt() * torch.randn(8, DATA_DIM)

    mean, stderr = _trace_elbo_estimate(model, x0)

    expected = _closed_form(model, x0).sum().item()
    assert abs(mean - expected) < 4 * stderr


@pytest.mark.parametrize("build", [_exact_model, _perturbed_model], ids=["exact", "perturbed"])
def test_timestep_elbo_matches_closed_form(build):
    model = build(6)
    x0 = MEAN + VARIANCE.sqrt() * torch.randn(4, DATA_DIM)

    mean, stderr = _timestep_estimate(model, x0)

    expected = _closed_form(model, x0).sum().item()
    assert abs(mean - expected) < 4 * stderr


def test_importance_timesteps_unbiased():
    model = _perturbed_model(6)
    x0 = MEAN + VARIANCE.sqrt() * torch.randn(4, DATA_DIM)
    sampler = ImportanceTimesteps(history=5, uniform_fraction=0.2)
    elbo = TimestepELBO(sampler=sampler)
    _timestep_estimate(model, x0, num_copies=50, elbo=elbo)
    probabilities = sampler.probabilities(6)

    mean, stderr = _timestep_estimate(model, x0, elbo=elbo)

    expected = _closed_form(model, x0).sum().item()
    assert not torch.allclose(probabilities, torch.full((5,), 0.2, dtype=torch.float64))
    assert abs(mean - expected) < 4 * stderr


def test_trace_elbo_below_data_likelihood():
    model = _exact_model(5)
    x0 = MEAN + VARIANCE.sqrt() * torch.randn(200, DATA_DIM)

    mean, stderr = _trace_elbo_estimate(model, x0)

    log_likelihood = gaussian_log_likelihood(x0, MEAN, VARIANCE).sum().item()
    assert mean < log_likelihood + 4 * stderr


@pytest.mark.parametrize("build", [_exact_model, _perturbed_model], ids=["exact", "perturbed"])
def test_trace_elbo_below_model_likelihood(build):
    model = build(5)
    x0 = MEAN + 2 * torch.randn(50, DATA_DIM)

    mean, stderr = _trace_elbo_estimate(model, x0)

    reverse = model.reverse
    model_mean, model_variance = linear_chain_marginal(
        reverse.loc_coef, reverse.loc_offset, reverse.log_variance
    )
    log_likelihood = gaussian_log_likelihood(x0, model_mean, model_variance).sum().item()
    assert mean < log_likelihood + 4 * stderr


@pytest.mark.parametrize("kernel", ["epsilon", "paper"])
def test_timestep_elbo_matches_trace_elbo(kernel):
    model = _mlp_model(kernel, num_steps=6)
    x0 = MEAN + VARIANCE.sqrt() * torch.randn(4, DATA_DIM)

    trace_mean, trace_stderr = _trace_elbo_estimate(model, x0)
    timestep_mean, timestep_stderr = _timestep_estimate(model, x0, num_copies=3000)

    stderr = math.hypot(trace_stderr, timestep_stderr)
    assert abs(trace_mean - timestep_mean) < 4 * stderr


def test_timestep_loss_averages_particles():
    model = _exact_model(5)
    x0 = MEAN + VARIANCE.sqrt() * torch.randn(6, DATA_DIM)

    loss = TimestepELBO(num_particles=400).loss(model.model, model.guide, x0)

    mean, stderr = _timestep_estimate(model, x0, num_copies=400)
    assert abs(-loss - _closed_form(model, x0).sum().item()) < 4 * stderr


def test_timestep_terms_use_one_step():
    model = _mlp_model("epsilon", num_steps=6)
    x0 = MEAN + VARIANCE.sqrt() * torch.randn(3, DATA_DIM)

    per_example = TimestepELBO().elbo_per_example(model.model, model.guide, x0)

    assert per_example.shape == (3,)
    assert per_example.requires_grad


def _train(model, loss, x0, num_steps=60):
    evaluation_data = x0.repeat(10, 1)

    def bound():
        generator = torch.Generator().manual_seed(0)
        return bound_terms(model, evaluation_data, generator).elbo().mean().item()

    before = bound()
    svi = SVI(model.model, model.guide, Adam({"lr": 1e-2}), loss=loss)
    losses = [svi.step(x0) for _ in range(num_steps)]
    return before, bound(), losses


@pytest.mark.parametrize("elbo_class", [TimestepELBO, Trace_ELBO])
def test_svi_improves_bound(elbo_class):
    torch.manual_seed(0)
    forward = _forward(5)
    net = MLP(DATA_DIM, 2 * DATA_DIM, 5, hidden_dim=16, num_blocks=1)
    model = DiffusionModel(forward, EpsilonReverse(forward, net, (DATA_DIM,), "learned"))
    x0 = MEAN + 0.3 * torch.randn(64, DATA_DIM)

    before, after, losses = _train(model, elbo_class(), x0)

    assert after > before + 1.0
    assert sum(losses[-10:]) < sum(losses[:10])
    assert all(math.isfinite(value) for value in losses)


def test_svi_updates_param_store():
    torch.manual_seed(0)
    model = _mlp_model("paper", num_steps=4)
    x0 = MEAN + VARIANCE.sqrt() * torch.randn(16, DATA_DIM)
    svi = SVI(model.model, model.guide, Adam({"lr": 1e-2}), loss=TimestepELBO())

    svi.step(x0)
    weight = model.reverse.net.output.weight
    stored = pyro.get_param_store()[f"{model._pyro_name}.reverse$$$net.output.weight"]

    assert stored is weight
